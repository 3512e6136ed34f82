"""The index page: one small JSON record per feature inside a non-executable script element, and the
viewer script (storage/viewer/viewer.js) that searches all of them and shows one page of rows at a
time; search, sort, filter and page sit in the URL's #fragment so Back/Forward restore them.

The page can be written whole (`render_index_page`) or streamed: `index_page_parts` gives the text
before and after the rows, and `index_row_json` one row, so a writer never holds every row at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from storage.export import ExportFeature, ExportSae
from storage.viewer_common import FEATURES_DIR, asset, esc, head, json_for_script, sae_line, script_csp

SORTS = (("score", "Pearson r (best first)"), ("spearman", "Spearman (best first)"),
         ("frac", "proteins firing (fewest first)"), ("feature", "feature id"), ("label", "label A–Z"))
STATIC_FEATURE_HREF = FEATURES_DIR + "/{n}.html"


def index_row(feature: ExportFeature) -> dict[str, Any]:
    """What the index script reads about one feature (no sequences)."""
    record = feature.record
    top = feature.top_concepts[0] if feature.top_concepts else {}
    return {
        "feature": record.feature,
        "label": record.label,
        "description": record.description,
        "concepts": record.concepts,
        "pearson": record.pearson,
        "spearman": record.spearman,
        "n_heldout": record.n_heldout,
        "validated": record.validated,
        "frac_proteins": feature.frac_proteins,
        "top_concept": top.get("concept") if isinstance(top, dict) else None,
        "n_suggestions": len(feature.suggestions),
    }


def render_index_rows(features: Iterable[ExportFeature]) -> list[dict[str, Any]]:
    return [index_row(f) for f in features]


def index_row_json(row: dict[str, Any]) -> str:
    return json_for_script(row)


def index_page_parts(sae: ExportSae, *, n_features: int, n_validated: int, has_examples: bool,
                     feature_href: str = STATIC_FEATURE_HREF) -> tuple[str, str]:
    """(text before the rows, text after them): the rows go between, as JSON objects joined by ','.

    `feature_href` is a feature page's URL with `{n}` for its id (serve passes its own route).
    """
    script = asset("viewer.js")
    examples_note = "" if has_examples else (
        " No activation index was found, so feature pages carry no example sequences.")
    options = "".join(f"<option value=\"{key}\">{esc(text)}</option>" for key, text in SORTS)
    before = (
        head(f"plmlabel: {sae.sae_id}", script_csp(script))
        + "<body>\n<header>\n"
        f"<h1>Features of SAE <code>{esc(sae.sae_id)}</code></h1>\n"
        f"<p class=\"meta\">{esc(sae_line(sae))}. {n_features} labels, {n_validated} validated."
        f"{esc(examples_note)}</p>\n</header>\n"
        "<div class=\"controls\">\n"
        "<input id=\"q\" type=\"search\" placeholder=\"Search labels, descriptions, concepts\" "
        "aria-label=\"Search labels, descriptions, concepts\" autocomplete=\"off\" autofocus>\n"
        f"<label>Sort by <select id=\"sort\" autocomplete=\"off\">{options}</select></label>\n"
        "<label><input id=\"validated\" type=\"checkbox\" autocomplete=\"off\"> validated only</label>\n"
        "<span id=\"count\" class=\"muted\"></span>\n</div>\n"
        "<noscript><p>The search needs JavaScript; each feature has its own page under "
        f"<code>{esc(feature_href.split('{n}')[0])}</code>.</p></noscript>\n"
        "<table id=\"features\">\n<thead><tr>"
        "<th data-sort=\"feature\">Feature</th><th data-sort=\"label\">Label</th><th>Description</th>"
        "<th>Top Swiss-Prot concept</th>"
        "<th class=\"num\" data-sort=\"score\">Pearson r</th>"
        "<th class=\"num\" data-sort=\"spearman\">Spearman</th>"
        "<th class=\"num\" data-sort=\"frac\">Proteins firing</th>"
        "<th class=\"num\">Held-out</th><th>Validated</th></tr></thead>\n"
        "<tbody id=\"rows\"></tbody>\n</table>\n"
        "<nav class=\"pager\" id=\"pager\"><button id=\"prev\" type=\"button\">← previous</button> "
        "<span id=\"page\"></span> <button id=\"next\" type=\"button\">next →</button></nav>\n"
        "<script type=\"application/json\" id=\"plmlabel-data\">"
        f"{{\"feature_href\":{json_for_script(feature_href)},\"sae_id\":{json_for_script(sae.sae_id)},"
        "\"features\":["
    )
    after = f"]}}</script>\n<script>{script}</script>\n</body>\n</html>\n"
    return before, after


def render_index_page(sae: ExportSae, rows: list[dict[str, Any]], *, has_examples: bool,
                      feature_href: str = STATIC_FEATURE_HREF) -> str:
    """The whole index page from rows of `index_row`."""
    before, after = index_page_parts(sae, n_features=len(rows),
                                     n_validated=sum(1 for r in rows if r.get("validated")),
                                     has_examples=has_examples, feature_href=feature_href)
    return before + ",".join(index_row_json(r) for r in rows) + after
