"""serve's own pages, as HTML strings. Every value from the database, the index or the request goes
through `esc`; there is no script on any page (render.SERVE_CSP allows none)."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import quote, urlencode

from agent.serve.data import FeatureView, FiredFeature
from agent.serve.limits import Limits
from agent.serve.render import SERVE_CSP, VIEWER_PAGE, esc, feature_page, fmt, shaded_sequence, viewer_css
from storage.export import ExportSae
from storage.saes import SaeRecord
from storage.search import LabelHit
from storage.suggestions import Suggestion

SERVE_CSS = """
nav.serve { display: flex; flex-wrap: wrap; gap: .5rem 1.25rem; align-items: center; margin: 0 0 1rem;
  padding-bottom: .5rem; border-bottom: 1px solid var(--line); }
nav.serve form { display: flex; gap: .4rem; }
nav.serve input[type=search] { padding: .25rem .5rem; border: 1px solid var(--line); border-radius: 6px; }
.message { padding: .75rem 1rem; border: 1px solid #d4a72c; background: #fff8c5; border-radius: 6px;
  max-width: 60rem; }
textarea { width: 100%; max-width: 60rem; font-family: ui-monospace, monospace; font-size: 13px; }
button { padding: .35rem .9rem; font-size: 1rem; }
"""


def sae_url(sae_id: str, *parts: str) -> str:
    return "/sae/" + quote(sae_id, safe="") + "/" + "/".join(quote(p, safe="") for p in parts)


def feature_url(sae_id: str, feature: int) -> str:
    return sae_url(sae_id, "features", str(feature))


def protein_url(sae_id: str, accession: str) -> str:
    return sae_url(sae_id, "proteins", accession)


def analyze_url(sae_id: str, text: str, feature: int | None = None) -> str:
    query = {"text": text} if feature is None else {"text": text, "feature": str(feature)}
    return sae_url(sae_id, "analyze") + "?" + urlencode(query)


def nav(sae_id: str | None, query: str = "", *, search: bool = True) -> str:
    if sae_id is None:
        return '<nav class="serve"><a href="/">plmlabel serve</a></nav>'
    return (
        '<nav class="serve"><a href="/">plmlabel serve</a>'
        f'<a href="{esc(sae_url(sae_id))}">SAE <code>{esc(sae_id)}</code></a>'
        + (f'<form method="get" action="{esc(sae_url(sae_id))}" role="search">'
           f'<input type="search" name="q" value="{esc(query)}" aria-label="Search labels" '
           'placeholder="Search labels"><button>Search</button></form>' if search else "")
        + f'<a href="{esc(sae_url(sae_id, "analyze"))}">Paste a sequence</a></nav>'
    )


def page(title: str, body: str, *, sae_id: str | None = None, search: bool = True) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{SERVE_CSP}\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        "<meta name=\"referrer\" content=\"no-referrer\">\n"
        f"<title>{esc(title)}</title>\n<style>\n{viewer_css()}{SERVE_CSS}</style>\n</head>\n<body>\n"
        f"{nav(sae_id, search=search)}\n{body}\n</body>\n</html>\n"
    )


def message_page(message: str, *, sae_id: str | None = None, title: str = "Cannot show this") -> str:
    return page(title, f"<h1>{esc(title)}</h1>\n<p class=\"message\" id=\"message\">{esc(message)}</p>",
                sae_id=sae_id)


def sae_list_page(saes: Sequence[SaeRecord]) -> str:
    if not saes:
        return message_page("This workspace has no SAE yet; train or import one (`plmlabel sae`).",
                            title="No SAE")
    items = "".join(
        f"<li><a href=\"{esc(sae_url(s.sae_id))}\"><code>{esc(s.sae_id)}</code></a> "
        f"<span class=\"muted\">{esc(s.architecture)}, {esc(s.d_sae)} features, layer {esc(s.layer)}"
        "</span></li>"
        for s in saes
    )
    return page("plmlabel serve", f"<h1>SAEs of this workspace</h1>\n<ul>{items}</ul>")


# --- search -----------------------------------------------------------------------------------------
def search_page(sae: ExportSae, hits: Sequence[LabelHit], *, query: str, validated: bool, limits: Limits,
                n_labels: int) -> str:
    checked = " checked" if validated else ""
    form = (
        f'<form class="controls" method="get" action="{esc(sae_url(sae.sae_id))}" role="search">'
        f'<input id="q" type="search" name="q" value="{esc(query)}" maxlength="{limits.max_query_chars}" '
        'placeholder="Search labels and descriptions" aria-label="Search labels and descriptions">'
        f'<label><input id="validated" type="checkbox" name="validated" value="1"{checked}> validated only'
        '</label><button id="search">Search</button></form>'
    )
    rows = "".join(
        f'<tr class="feature-row" data-feature="{hit.feature}">'
        f'<td class="num"><a href="{esc(feature_url(sae.sae_id, hit.feature))}">{hit.feature}</a></td>'
        f'<td><a href="{esc(feature_url(sae.sae_id, hit.feature))}">{esc(hit.label)}</a></td>'
        f'<td class="desc">{esc(hit.description)}</td><td class="num">{fmt(hit.pearson)}</td>'
        f'<td>{"yes" if hit.validated else "no"}</td></tr>'
        for hit in hits
    )
    what = f"matching {query!r}" if query else "by Pearson r"
    more = (f" (the first {limits.max_results}; refine the search)" if len(hits) >= limits.max_results
            else "")
    count = f'<p id="count" class="muted">{len(hits)} of {n_labels} labels, {esc(what)}{esc(more)}.</p>'
    table = (
        '<table id="features"><thead><tr><th class="num">Feature</th><th>Label</th><th>Description</th>'
        '<th class="num">Pearson r</th><th>Validated</th></tr></thead>'
        f'<tbody id="rows">{rows}</tbody></table>'
    )
    header = (f"<h1>Features of SAE <code>{esc(sae.sae_id)}</code></h1>\n"
              f"<p class=\"meta\">{esc(sae.plm_model)}, layer {esc(sae.layer)}, {esc(sae.architecture)}, "
              f"{esc(sae.d_sae)} features.</p>")
    return page(f"plmlabel: {sae.sae_id}" + (f" ({query})" if query else ""),
                f"{header}\n{form}\n{count}\n{table}", sae_id=sae.sae_id, search=False)


# --- suggestions --------------------------------------------------------------------------------------
def _ranges(residues: Sequence[tuple[int, int]]) -> str:
    return ", ".join(f"{s}-{e}" if s != e else str(s) for s, e in residues) or "whole protein"


def suggestions_table(sae_id: str, suggestions: Sequence[Suggestion], *, by_feature: bool) -> str:
    if not suggestions:
        return "<p class=\"muted\" id=\"no-suggestions\">No suggestions stored (run `plmlabel suggest`).</p>"
    first = "Feature" if by_feature else "Protein"
    rows = []
    for s in suggestions:
        ev = s.evidence
        cell = (f'<a href="{esc(feature_url(sae_id, s.feature))}">{s.feature}</a>' if by_feature
                else f'<a href="{esc(protein_url(sae_id, s.accession))}">{esc(s.accession)}</a>')
        rows.append(
            f'<tr class="suggestion"><td>{cell}</td><td>{esc(s.concept)}</td>'
            f'<td>{esc(_ranges(s.residues))}</td>'
            f'<td class="num">{s.activation:.3g}</td><td class="num">{fmt(s.normalized)}</td>'
            f'<td class="num">{fmt(ev.precision)} / {fmt(ev.recall)} / {fmt(ev.f1)}</td>'
            f'<td>{esc(ev.label)}</td><td class="num">{fmt(s.rank_score, 3)}</td></tr>'
        )
    return (
        "<p class=\"muted\">Proteins where the feature fires as it does on annotated residues but Swiss-Prot "
        "lists no such annotation: a claim to check, never a change to the data.</p>"
        f'<table id="suggestions"><thead><tr><th>{first}</th><th>Concept</th><th>Residues</th>'
        '<th class="num">Activation</th><th class="num">Of max</th>'
        '<th class="num">Precision / recall / F1</th>'
        f'<th>Label</th><th class="num">Rank</th></tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


# --- feature ------------------------------------------------------------------------------------------
def _neighbour_links(view: FeatureView) -> str:
    links = []
    if view.previous is not None:
        links.append(f'<a id="previous" href="{esc(feature_url(view.sae.sae_id, view.previous))}">'
                     f"← feature {view.previous}</a>")
    if view.next is not None:
        links.append(f'<a id="next" href="{esc(feature_url(view.sae.sae_id, view.next))}">'
                     f"feature {view.next} →</a>")
    return f"<p class=\"muted\">{' · '.join(links)}</p>" if links else ""


def feature_html(view: FeatureView) -> str:
    sae_id = view.sae.sae_id
    suggestions = (f"<h2>Suggested missing annotations</h2>\n"
                   f"{suggestions_table(sae_id, view.suggestions, by_feature=False)}")
    problem = (f"<p class=\"muted\" id=\"examples-problem\">{esc(view.examples_problem)}</p>"
               if view.examples_problem else "")
    if view.export is not None:
        own = "" if VIEWER_PAGE else f"{_neighbour_links(view)}\n{suggestions}"
        return feature_page(view.sae, view.export, index_url=sae_url(sae_id),
                            feature_url=lambda n: feature_url(sae_id, n), previous=view.previous,
                            next=view.next, nav=nav(sae_id), css=SERVE_CSS, extra=f"{problem}\n{own}")
    stats = view.stats
    facts = ("No statistics yet (run `plmlabel index`)." if stats is None else
             f"Max activation {stats.max_activation:.3g}; fires on {stats.frac_proteins:.1%} of the indexed "
             f"proteins and {stats.frac_residues:.2%} of their residues.")
    body = (
        f"<h1>Feature {view.feature}</h1>\n<p class=\"message\" id=\"message\">Feature {view.feature} of SAE "
        f"{esc(sae_id)} has no label yet; run <code>plmlabel label {esc(sae_id)} --features {view.feature}"
        f"</code>.</p>\n<p>{esc(facts)}</p>\n{problem}\n{_neighbour_links(view)}\n{suggestions}"
    )
    return page(f"Feature {view.feature} ({sae_id})", body, sae_id=sae_id)


# --- paste a sequence --------------------------------------------------------------------------------
def analyze_form(sae_id: str, limits: Limits, *, text: str = "", message: str | None = None) -> str:
    note = f'<p class="message" id="message">{esc(message)}</p>' if message else ""
    return (
        f"{note}<form method=\"post\" action=\"{esc(sae_url(sae_id, 'analyze'))}\">"
        f"<p><label for=\"text\">A protein sequence (plain or FASTA, up to {limits.max_residues:,} residues) "
        "or the UniProt accession of a protein in this workspace:</label></p>"
        f'<textarea id="text" name="text" rows="6">{esc(text)}</textarea>'
        '<p><button id="analyze">Show the features that fire</button></p></form>'
    )


def analyze_page(sae_id: str, limits: Limits, *, text: str = "", message: str | None = None) -> str:
    body = f"<h1>Paste a sequence</h1>\n{analyze_form(sae_id, limits, text=text, message=message)}"
    return page(f"Paste a sequence ({sae_id})", body, sae_id=sae_id)


_NOT_LABELED = '<span class="muted">not labeled</span>'
_VALIDATED = ' <span class="badge ok">validated</span>'


def result_page(sae_id: str, limits: Limits, *, text: str, name: str, sequence: str,
                fired: Sequence[FiredFeature], n_fired: int, chosen: int | None,
                chosen_values: list[float] | None, chosen_max: float | None,
                accession: str | None = None) -> str:
    rows = "".join(
        f'<tr class="fired" data-feature="{f.feature}">'
        f'<td class="num"><a href="{esc(feature_url(sae_id, f.feature))}">{f.feature}</a></td>'
        f'<td>{esc(f.label) if f.label else _NOT_LABELED}{_VALIDATED if f.validated else ""}</td>'
        f'<td class="num">{f.max_activation:.3g}</td><td class="num">{fmt(f.normalized)}</td>'
        f'<td class="num">{f.n_residues}</td><td>{esc(_ranges(f.ranges)[:120])}</td>'
        f'<td><a class="residues" href="{esc(analyze_url(sae_id, text, f.feature))}">residues</a></td></tr>'
        for f in fired
    )
    shown = f"the {len(fired)} strongest" if len(fired) < n_fired else "all"
    table = (
        f"<p id=\"fired-count\">{n_fired} features fire on {esc(name)} ({len(sequence)} residues); "
        f"{shown} are listed, strongest (of each feature's max over the index) first.</p>"
        '<table id="fired"><thead><tr><th class="num">Feature</th><th>Label</th><th class="num">Max</th>'
        '<th class="num">Of feature max</th><th class="num">Residues</th><th>Where</th><th></th></tr></thead>'
        f"<tbody>{rows}</tbody></table>"
    ) if fired else f"<p id=\"fired-count\">No feature fires on {esc(name)}.</p>"
    detail = ""
    if chosen is not None and chosen_values is not None:
        scale = chosen_max or max(chosen_values, default=0.0)
        detail = (
            f"<h2 id=\"residues\">Feature {chosen} on each residue</h2>"
            f"<p class=\"muted\">Shaded by activation, 0 to {scale:.3g} (the feature's max over the index "
            "where known). Hover a residue for its value.</p>"
            f"<div class=\"seq\" id=\"chosen-seq\">{shaded_sequence(sequence, chosen_values, scale)}</div>"
        )
    protein = (f'<p>The workspace protein {esc(accession)}: <a id="protein-link" '
               f'href="{esc(protein_url(sae_id, accession))}">its page and suggested annotations</a>.</p>'
               if accession else "")
    body = (f"<h1>Features on {esc(name)}</h1>\n{protein}\n{table}\n{detail}\n<h2>Another sequence</h2>\n"
            f"{analyze_form(sae_id, limits, text=text)}")
    return page(f"Features on {name} ({sae_id})", body, sae_id=sae_id)


# --- protein -----------------------------------------------------------------------------------------
def protein_page(sae_id: str, accession: str, protein, suggestions: Sequence[Suggestion]) -> str:
    if protein is None:
        facts = "<p class=\"muted\">This protein is not in the workspace database.</p>"
    else:
        url = "https://www.uniprot.org/uniprotkb/" + quote(accession, safe="")
        facts = (f"<p>{esc(protein.protein_name or protein.entry_name)} <i>{esc(protein.organism)}</i>, "
                 f"{protein.length} residues · <a href=\"{esc(url)}\" rel=\"noopener noreferrer\">UniProt"
                 f"</a> · <a id=\"analyze-protein\" href=\"{esc(analyze_url(sae_id, accession))}\">features "
                 "that fire</a></p>")
    body = (f"<h1>Protein {esc(accession)}</h1>\n{facts}\n<h2>Suggested missing annotations</h2>\n"
            f"{suggestions_table(sae_id, suggestions, by_feature=True)}")
    return page(f"{accession} ({sae_id})", body, sae_id=sae_id)
