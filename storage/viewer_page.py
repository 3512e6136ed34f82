"""One feature's page: label, scores, how often and how strongly it fires, concepts (the label's and the
Swiss-Prot F1 associations, apart), the held-out scatter, the agent's trace, suggestions, and example
sequences with their annotation tracks.

`render_feature_page(feature, context)` is the public entry point: the static export and
`plmlabel serve` both call it, passing where links point (`Links`) in the context.
"""

from __future__ import annotations

from dataclasses import dataclass

from storage.export import ExportExample, ExportFeature, ExportSae, provenance
from storage.suggestions import Suggestion
from storage.viewer_charts import firing_summary, histogram_svg, scatter_svg
from storage.viewer_common import PAGE_CSP, Links, alphafold_url, esc, fmt, head, sae_line, uniprot_url
from storage.viewer_trace import trace_html
from storage.viewer_tracks import TrackCache, sequence_tracks_html

# Example sequences drawn in full per kind; the others of the kind are listed in one line each.
SHOWN = {"top": 6, "quantile": 5, "silent": 2}
KIND_TITLES = {
    "top": ("Top examples", "the proteins where the feature fires most strongly"),
    "quantile": ("Quantile examples", "proteins across the range of activation strengths"),
    "silent": ("Silent examples", "proteins where the feature does not fire at all"),
}
MAX_SUGGESTIONS = 50


@dataclass(frozen=True)
class PageContext:
    """What a feature page needs beyond the feature: the SAE, link targets, its neighbours."""

    sae: ExportSae
    links: Links
    previous: int | None = None  # the feature before this one in the export (None: first)
    next: int | None = None
    has_examples: bool = True  # False: no activation index was read
    track_cache: TrackCache | None = None  # a dict shared across pages: each protein's lanes laid out once


def _protein_links(accession: str) -> str:
    return (f"<a href=\"{esc(uniprot_url(accession))}\" rel=\"noopener noreferrer\">UniProt</a> · "
            f"<a href=\"{esc(alphafold_url(accession))}\" rel=\"noopener noreferrer\">AlphaFold DB</a>")


def _example_head(ex: ExportExample) -> str:
    fired = (f"max {ex.max_activation:.3g} ({ex.normalized:.2f} of the feature's max)"
             if ex.max_activation > 0 else "does not fire")
    return (f"<div class=\"head\"><b>{esc(ex.accession)}</b> {esc(ex.name)} "
            f"<span class=\"muted\"><i>{esc(ex.organism)}</i> · {len(ex.sequence)} aa · {fired}</span> "
            f"<span class=\"out\">{_protein_links(ex.accession)}</span></div>")


def _spread(examples: list[ExportExample], n: int) -> list[ExportExample]:
    """n examples evenly spaced through the list (all of them when there are few)."""
    if len(examples) <= n:
        return examples
    step = (len(examples) - 1) / (n - 1) if n > 1 else 0
    return [examples[round(i * step)] for i in range(n)]


def _examples_section(feature: ExportFeature, context: PageContext) -> str:
    if not feature.examples:
        why = ("no activation index when this was exported" if not context.has_examples
               else "the index holds none for this feature")
        return f"<h2>Example sequences</h2>\n<p class=\"muted\">No example sequences ({esc(why)}).</p>\n"
    scale = feature.max_activation or max((max(ex.activations, default=0.0) for ex in feature.examples),
                                          default=0.0)
    legend = ("<p class=\"muted\">Residues shaded by activation: <span class=\"legend\"></span> 0 to the "
              "feature's max. Tracks under each line: Swiss-Prot domains, regions, sites "
              "(A active, B binding, M modified, G glycosylation, C disulfide ...), secondary structure "
              "(= helix, &gt; strand, ^ turn), and suggested annotations. Hover for details.</p>")
    parts = [f"<h2>Example sequences</h2>\n{legend}"]
    for kind, (title, meaning) in KIND_TITLES.items():
        of_kind = sorted((ex for ex in feature.examples if ex.kind == kind),
                         key=lambda e: (-e.max_activation, e.accession))
        if not of_kind:
            continue
        drawn = of_kind[: SHOWN[kind]] if kind != "quantile" else _spread(of_kind, SHOWN[kind])
        rest = [ex for ex in of_kind if ex not in drawn]
        parts.append(f"<h3 id=\"{kind}\">{esc(title)} <span class=\"muted\">({len(of_kind)}: "
                     f"{esc(meaning)})</span></h3>")
        for ex in drawn:
            parts.append(f"<div class=\"example {kind}\">{_example_head(ex)}"
                         f"{sequence_tracks_html(ex, scale, context.track_cache)}"
                         f"{_protein_suggestions(ex)}</div>")
        if rest:
            items = "".join(f"<li><b>{esc(ex.accession)}</b> {esc(ex.name)} <span class=\"muted\">max "
                            f"{ex.max_activation:.3g}</span> {_protein_links(ex.accession)}</li>"
                            for ex in rest)
            parts.append(f"<details><summary>{len(rest)} more</summary>"
                         f"<ul class=\"more\">{items}</ul></details>")
    return "\n".join(parts) + "\n"


def _protein_suggestions(ex: ExportExample) -> str:
    if not ex.suggestions:
        return ""
    items = "".join(
        f"<li>{esc(s.concept)} <span class=\"muted\">by feature {s.feature}"
        f"{', residues ' + esc(_ranges(s)) if s.residues else ''}, rank score {s.rank_score:.3f}</span></li>"
        for s in ex.suggestions[:10])
    return f"<div class=\"sugg-protein\">Suggested for this protein: <ul>{items}</ul></div>"


def _ranges(s: Suggestion) -> str:
    return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in s.residues)


def _concepts_section(feature: ExportFeature) -> str:
    label_concepts = "".join(f"<li>{esc(c)}</li>" for c in feature.record.concepts)
    label_part = (f"<ul class=\"concepts\">{label_concepts}</ul>" if label_concepts
                  else "<p class=\"muted\">None.</p>")
    rows = []
    for c in feature.top_concepts:
        def num(key: str, c: dict = c) -> str:
            value = c.get(key)
            return fmt(value) if isinstance(value, int | float) and not isinstance(value, bool) else "–"
        f1 = c.get("f1_test", c.get("f1"))
        f1_text = fmt(f1) if isinstance(f1, int | float) and not isinstance(f1, bool) else "–"
        rows.append(f"<tr><td>{esc(c.get('concept'))}</td><td>{esc(c.get('kind'))}</td>"
                    f"<td class=\"num\">{f1_text}</td><td class=\"num\">{num('precision_test')}</td>"
                    f"<td class=\"num\">{num('recall_test')}</td>"
                    f"<td class=\"num\">{num('threshold')}</td></tr>")
    f1_part = (
        "<table class=\"assoc\"><thead><tr><th>Swiss-Prot concept</th><th>level</th>"
        "<th class=\"num\">F1 (test)</th><th class=\"num\">precision</th><th class=\"num\">recall</th>"
        "<th class=\"num\">threshold</th>"
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>" if rows
        else "<p class=\"muted\">None (run <code>plmlabel concepts</code>).</p>")
    return (
        "<h2>Concepts</h2>\n"
        "<h3>Named by the label</h3><p class=\"meaning muted\">What the explainer says the feature is about, "
        "written with the label; a claim, checked only through the label's score.</p>"
        f"{label_part}\n"
        "<h3>Swiss-Prot concept associations</h3><p class=\"meaning muted\">Annotations whose residues the "
        "feature's activation picks out, measured: F1 of &quot;activation above the threshold&quot; against "
        "the annotation on the test split (the threshold, on the normalised activation, was chosen on the "
        f"validation split).</p>{f1_part}\n"
    )


def _suggestions_section(feature: ExportFeature) -> str:
    if not feature.suggestions:
        return ""
    rows = "".join(
        f"<tr><td><b>{esc(s.accession)}</b> {_protein_links(s.accession)}</td><td>{esc(s.concept)}</td>"
        f"<td>{esc(_ranges(s)) or '–'}</td><td class=\"num\">{s.normalized:.2f}</td>"
        f"<td class=\"num\">{fmt(s.evidence.f1)}</td><td class=\"num\">{s.rank_score:.3f}</td></tr>"
        for s in feature.suggestions[:MAX_SUGGESTIONS])
    more = (f"<p class=\"muted\">{len(feature.suggestions) - MAX_SUGGESTIONS} more: "
            "<code>plmlabel suggest --json</code>.</p>" if len(feature.suggestions) > MAX_SUGGESTIONS else "")
    return (
        "<h2>Suggested missing annotations</h2>\n<p class=\"meaning muted\">Proteins where this feature "
        "fires as it does on annotated residues of a concept it tracks, but Swiss-Prot does not list the "
        "concept (<code>plmlabel suggest</code>; a claim, never a change to the data).</p>"
        "<table class=\"sugg\"><thead><tr><th>Protein</th><th>Concept</th><th>Residues</th>"
        "<th class=\"num\">activation</th><th class=\"num\">F1</th><th class=\"num\">rank score</th>"
        "</tr></thead>"
        f"<tbody>{rows}</tbody></table>{more}\n"
    )


def _nav(feature: int, context: PageContext) -> str:
    links = context.links
    prev = (f"<a rel=\"prev\" href=\"{esc(links.feature(context.previous))}\">"
            f"← feature {context.previous}</a>" if context.previous is not None
            else "<span class=\"muted\">← first</span>")
    nxt = (f"<a rel=\"next\" href=\"{esc(links.feature(context.next))}\">feature {context.next} →</a>"
           if context.next is not None else "<span class=\"muted\">last →</span>")
    return (f"<nav class=\"pager\"><a href=\"{esc(links.index)}\">all features</a> · {prev} · {nxt}</nav>")


def render_feature_page(feature: ExportFeature, context: PageContext) -> str:
    """The whole HTML page of one feature (no script; every stored text escaped)."""
    record = feature.record
    badge = ("<span class=\"badge ok\">validated</span>" if record.validated
             else "<span class=\"badge no\">not validated</span>")
    score_items = [("Pearson r", fmt(record.pearson)), ("Spearman", fmt(record.spearman))]
    if record.oneshot_pearson is not None:
        score_items.append(("one-shot r", fmt(record.oneshot_pearson)))
    if record.residue_pearson is not None:  # shown only where the per-residue pass ran
        score_items.append(("per-residue r", fmt(record.residue_pearson)))
    score_items += [("held-out", esc(record.n_heldout) if record.n_heldout is not None else "–"),
                    ("confidence", fmt(record.confidence))]
    scores = "".join(f"<div>{esc(name)}<b>{value}</b></div>" for name, value in score_items)
    firing = "".join(f"<div>{esc(name)}<b>{esc(value)}</b></div>" for name, value in firing_summary(feature))
    prov = "".join(f"<dt>{esc(key)}</dt><dd>{esc(value) if value is not None else '–'}</dd>"
                   for key, value in provenance(record).items())
    trace = trace_html(record.trace, record.oneshot_pearson, record.pearson)
    trace_part = f"<h2>Agent trace</h2>\n{trace}\n" if trace else ""
    title = f"Feature {record.feature}" + (f": {record.label}" if record.label else "")
    return (
        head(f"{title} ({context.sae.sae_id})", PAGE_CSP)
        + "<body>\n<header>\n"
        f"{_nav(record.feature, context)}\n"
        f"<p>SAE <code>{esc(context.sae.sae_id)}</code> "
        f"<span class=\"muted\">{esc(sae_line(context.sae))}</span></p>\n"
        f"<h1>Feature {record.feature}: <span class=\"label\">{esc(record.label)}</span> {badge}</h1>\n"
        f"<div class=\"scores\">{scores}</div>\n</header>\n"
        f"<h2>Description</h2>\n<p class=\"description\">{esc(record.description)}</p>\n"
        f"<h2>How often and how strongly it fires</h2>\n<div class=\"scores\">{firing}</div>\n"
        f"{histogram_svg(feature.histogram, feature.max_activation)}\n"
        f"{_concepts_section(feature)}"
        f"<h2>Held-out proteins: predicted against actual</h2>\n{scatter_svg(feature)}\n"
        f"{trace_part}{_suggestions_section(feature)}{_examples_section(feature, context)}"
        f"<h2>Provenance</h2>\n<dl class=\"provenance\">{prov}</dl>\n"
        "</body>\n</html>\n"
    )
