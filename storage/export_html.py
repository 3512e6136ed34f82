"""The static HTML viewer: `index.html` (search, sort by score) and `features/<n>.html` per feature.

Self-contained: CSS and script are inlined, nothing is fetched, so it opens from disk or any static host.
All text that came from an LLM or from Swiss-Prot is untrusted: feature pages are rendered on this side
with `html.escape`; the index page's data is JSON inside `<script type="application/json">` with `<`,
`>`, `&` and U+2028/9 escaped, which the script writes with `textContent` only. A Content-Security-
Policy allows no script but the index's own (by hash) as a second line of defence.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

from storage.export import ExportBundle, ExportExample, ExportFeature, label_fields

_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
PAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"
FEATURES_DIR = "features"


def esc(value: Any) -> str:
    """Escape anything for HTML text or a quoted attribute; None becomes ''."""
    return "" if value is None else html.escape(str(value), quote=True)


def _attr(value: str) -> str:
    """Escape for a double-quoted attribute, keeping single quotes readable (a CSP is full of them)."""
    return html.escape(value, quote=False).replace('"', "&quot;")


def json_for_script(data: Any) -> str:
    """JSON that is safe inside a <script> element (cannot close it or start a comment)."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    for char, escaped in _JSON_ESCAPES.items():
        text = text.replace(char, escaped)
    return text


def _asset(name: str) -> str:
    return resources.files("storage.viewer").joinpath(name).read_text(encoding="utf-8")


def _script_csp(script: str) -> str:
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    return (
        "default-src 'none'; style-src 'unsafe-inline'; "
        f"script-src 'sha256-{digest}'; img-src data:; base-uri 'none'; form-action 'none'"
    )


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _head(title: str, csp: str, css: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_attr(csp)}\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        "<meta name=\"referrer\" content=\"no-referrer\">\n"
        f"<title>{esc(title)}</title>\n<style>\n{css}</style>\n</head>\n"
    )


def _sae_line(bundle: ExportBundle) -> str:
    sae = bundle.sae
    parts = [p for p in (sae.plm_model, f"layer {sae.layer}" if sae.layer is not None else None,
                         sae.architecture, f"{sae.d_sae} features" if sae.d_sae else None) if p]
    return ", ".join(parts)


# --- index page --------------------------------------------------------------------------------------
def index_data(bundle: ExportBundle) -> dict[str, Any]:
    """What the index page's script reads: one small record per feature (no sequences)."""
    rows = []
    for feature in bundle.features:
        record = feature.record
        rows.append({
            "feature": record.feature,
            "label": record.label,
            "description": record.description,
            "concepts": record.concepts,
            "pearson": record.pearson,
            "spearman": record.spearman,
            "n_heldout": record.n_heldout,
            "validated": record.validated,
        })
    return {"sae_id": bundle.sae.sae_id, "features": rows}


def render_index(bundle: ExportBundle) -> str:
    script = _asset("viewer.js")
    n_valid = sum(1 for f in bundle.features if f.record.validated)
    examples_note = "" if bundle.has_examples else (
        " No activation index was found, so feature pages carry no example sequences."
    )
    sorts = (("score", "Pearson r (best first)"), ("spearman", "Spearman (best first)"),
             ("feature", "feature id"), ("label", "label A–Z"))
    options = "".join(f"<option value=\"{key}\">{esc(text)}</option>" for key, text in sorts)
    return (
        _head(f"plmlabel: {bundle.sae.sae_id}", _script_csp(script), _asset("viewer.css"))
        + "<body>\n<header>\n"
        f"<h1>Features of SAE <code>{esc(bundle.sae.sae_id)}</code></h1>\n"
        f"<p class=\"meta\">{esc(_sae_line(bundle))}. {len(bundle.features)} labels, {n_valid} validated."
        f"{esc(examples_note)}</p>\n</header>\n"
        "<div class=\"controls\">\n"
        "<input id=\"q\" type=\"search\" placeholder=\"Search labels and descriptions\" "
        "aria-label=\"Search labels and descriptions\" autofocus>\n"
        f"<label>Sort by <select id=\"sort\">{options}</select></label>\n"
        "<label><input id=\"validated\" type=\"checkbox\"> validated only</label>\n"
        "<span id=\"count\" class=\"muted\"></span>\n</div>\n"
        "<noscript><p>The search needs JavaScript; each feature has its own page under "
        f"<code>{FEATURES_DIR}/</code>.</p></noscript>\n"
        "<table id=\"features\">\n<thead><tr>"
        "<th data-sort=\"feature\">Feature</th><th data-sort=\"label\">Label</th><th>Description</th>"
        "<th class=\"num\" data-sort=\"score\">Pearson r</th>"
        "<th class=\"num\" data-sort=\"spearman\">Spearman</th>"
        "<th class=\"num\">Held-out</th><th>Validated</th></tr></thead>\n"
        "<tbody id=\"rows\"></tbody>\n</table>\n"
        "<script type=\"application/json\" id=\"plmlabel-data\">"
        f"{json_for_script(index_data(bundle))}</script>\n"
        f"<script>{script}</script>\n</body>\n</html>\n"
    )


# --- feature pages -----------------------------------------------------------------------------------
def _scatter_svg(feature: ExportFeature) -> str:
    """Predicted (0-10) against actual (normalised 0-1) for the held-out proteins, as inline SVG."""
    predictions = [p for p in feature.record.predictions if p.actual is not None]
    if not predictions:
        return "<p class=\"muted\">No held-out predictions stored.</p>"
    width, height, pad = 360, 260, 36
    top = max(10.0, max(p.predicted for p in predictions))
    plot_w, plot_h = width - 2 * pad, height - 2 * pad

    def x(v: float) -> float:
        return pad + plot_w * min(max(v, 0.0), 1.0)

    def y(v: float) -> float:
        return height - pad - plot_h * min(max(v / top, 0.0), 1.0)

    grid = "".join(
        f"<line x1=\"{pad}\" y1=\"{y(t):.1f}\" x2=\"{width - pad}\" y2=\"{y(t):.1f}\"/>"
        f"<text x=\"{pad - 6}\" y=\"{y(t) + 4:.1f}\" text-anchor=\"end\">{t:g}</text>"
        for t in (0, top / 2, top)
    ) + "".join(
        f"<line x1=\"{x(t):.1f}\" y1=\"{pad}\" x2=\"{x(t):.1f}\" y2=\"{height - pad}\"/>"
        f"<text x=\"{x(t):.1f}\" y=\"{height - pad + 14}\" text-anchor=\"middle\">{t:g}</text>"
        for t in (0, 0.5, 1)
    )
    dots = "".join(
        f"<circle cx=\"{x(p.actual or 0.0):.1f}\" cy=\"{y(p.predicted):.1f}\" r=\"4\">"
        f"<title>{esc(p.accession)}: predicted {p.predicted:g}, actual {p.actual or 0.0:.2f}</title></circle>"
        for p in predictions
    )
    labels = (
        f"<text x=\"{width / 2:.0f}\" y=\"{height - 6}\" text-anchor=\"middle\">"
        "actual (normalised max)</text>"
        f"<text x=\"12\" y=\"{height / 2:.0f}\" text-anchor=\"middle\" "
        f"transform=\"rotate(-90 12 {height / 2:.0f})\">predicted</text>"
    )
    return (
        f"<svg class=\"scatter\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" "
        f"role=\"img\" aria-label=\"predicted against actual activation of {len(predictions)} held-out "
        f"proteins\">{grid}{labels}{dots}</svg>"
    )


def _sequence_html(example: ExportExample, scale: float) -> str:
    """The sequence with each firing residue shaded by its activation relative to `scale`."""
    parts: list[str] = []
    plain: list[str] = []
    for position, residue in enumerate(example.sequence, start=1):
        value = example.activations[position - 1] if position <= len(example.activations) else 0.0
        if value > 0:
            if plain:
                parts.append(esc("".join(plain)))
                plain = []
            alpha = min(1.0, value / scale) if scale > 0 else 1.0
            parts.append(
                f"<span style=\"background:rgba(207,34,46,{max(alpha, 0.08):.2f})\" "
                f"title=\"{esc(residue)}{position}: {value:.3g}\">{esc(residue)}</span>"
            )
        else:
            plain.append(residue)
    if plain:
        parts.append(esc("".join(plain)))
    return "".join(parts)


def _examples_html(feature: ExportFeature) -> str:
    shown = [ex for ex in feature.examples if ex.kind != "silent"]
    if not shown:
        return "<p class=\"muted\">No example sequences (no activation index when this was exported).</p>"
    scale = feature.max_activation or max((max(ex.activations, default=0.0) for ex in shown), default=0.0)
    blocks = []
    for ex in sorted(shown, key=lambda e: (-e.max_activation, e.accession)):
        url = "https://www.uniprot.org/uniprotkb/" + quote(ex.accession, safe="")
        blocks.append(
            "<div class=\"example\"><div class=\"head\">"
            f"<a href=\"{esc(url)}\" rel=\"noopener noreferrer\">{esc(ex.accession)}</a> "
            f"{esc(ex.name)} <span class=\"muted\"><i>{esc(ex.organism)}</i> · "
            f"max {ex.max_activation:.3g} ({ex.normalized:.2f} of the feature's max) · {esc(ex.kind)}</span>"
            f"</div><div class=\"seq\">{_sequence_html(ex, scale)}</div></div>"
        )
    return (
        "<p class=\"muted\">Residues shaded by activation: <span class=\"legend\"></span> "
        "0 to the feature's max.</p>" + "".join(blocks)
    )


def _concepts_html(feature: ExportFeature) -> str:
    items = [f"<li>{esc(c)}</li>" for c in feature.record.concepts]
    for concept in feature.top_concepts:
        name = concept.get("concept")
        f1 = concept.get("f1_test", concept.get("f1"))
        score = f" <span class=\"muted\">F1 {_fmt(f1)}</span>" if isinstance(f1, int | float) else ""
        items.append(f"<li>Swiss-Prot: {esc(name)}{score}</li>")
    return f"<ul class=\"concepts\">{''.join(items)}</ul>" if items else "<p class=\"muted\">None.</p>"


def render_feature(bundle: ExportBundle, feature: ExportFeature) -> str:
    record = feature.record
    fields = label_fields(feature)
    badge = ("<span class=\"badge ok\">validated</span>" if record.validated
             else "<span class=\"badge no\">not validated</span>")
    per_residue = ()  # shown only where the per-residue pass ran
    if record.residue_pearson is not None:
        per_residue = (("per-residue r", _fmt(record.residue_pearson)),)
    score_items = (
        ("Pearson r", _fmt(record.pearson)), ("Spearman", _fmt(record.spearman)), *per_residue,
        ("held-out", esc(record.n_heldout) if record.n_heldout is not None else "–"),
        ("confidence", _fmt(record.confidence)),
    )
    scores = "".join(f"<div>{esc(name)}<b>{value}</b></div>" for name, value in score_items)
    provenance = "".join(
        f"<dt>{esc(key)}</dt><dd>{esc(value) if value is not None else '–'}</dd>"
        for key, value in fields["provenance"].items()
    )
    title = f"Feature {record.feature}" + (f": {record.label}" if record.label else "")
    return (
        _head(f"{title} ({bundle.sae.sae_id})", PAGE_CSP, _asset("viewer.css"))
        + "<body>\n<header>\n"
        "<p><a href=\"../index.html\">← all features</a> · "
        f"SAE <code>{esc(bundle.sae.sae_id)}</code> "
        f"<span class=\"muted\">{esc(_sae_line(bundle))}</span></p>\n"
        f"<h1>Feature {record.feature}: <span class=\"label\">{esc(record.label)}</span> {badge}</h1>\n"
        f"<div class=\"scores\">{scores}</div>\n</header>\n"
        f"<h2>Description</h2>\n<p class=\"description\">{esc(record.description)}</p>\n"
        f"<h2>Concepts</h2>\n{_concepts_html(feature)}\n"
        f"<h2>Held-out proteins: predicted against actual</h2>\n{_scatter_svg(feature)}\n"
        f"<h2>Example sequences</h2>\n{_examples_html(feature)}\n"
        f"<h2>Provenance</h2>\n<dl class=\"provenance\">{provenance}</dl>\n"
        "</body>\n</html>\n"
    )


def write_html(bundle: ExportBundle, folder: Path) -> list[str]:
    """Write index.html and features/<n>.html into `folder`; returns the relative paths."""
    (folder / FEATURES_DIR).mkdir()
    files = ["index.html"]
    (folder / "index.html").write_text(render_index(bundle), encoding="utf-8")
    for feature in bundle.features:
        name = f"{FEATURES_DIR}/{feature.record.feature}.html"
        (folder / name).write_text(render_feature(bundle, feature), encoding="utf-8")
        files.append(name)
    return files
