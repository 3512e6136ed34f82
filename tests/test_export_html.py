"""The static HTML viewer (`export --format html`): self-contained, every stored text escaped, and each
thing a feature page shows (firing statistics and histogram, annotation tracks under a ruler, top,
quantile and silent examples, counted scatter spots, the two kinds of concepts, neighbours, the agent
trace, suggestions, links out)."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re

import numpy as np
import pytest

from agent.export_bundle import histogram
from storage.export import (
    MANIFEST_NAME,
    ActivationHistogram,
    ExportAnnotation,
    ExportExample,
    write_export,
)
from storage.export_html import json_for_script, render_feature, render_index
from storage.labels import PredictionRow
from storage.suggestions import Evidence, Suggestion
from storage.viewer_common import Links
from storage.viewer_page import PageContext, render_feature_page
from storage.viewer_tracks import GUTTER, ROW, sequence_tracks_html
from tests.test_export import bundle, exports, seeded  # noqa: F401  (fixtures)
from tests.test_query import PAYLOAD_DESCRIPTION, PAYLOAD_LABEL

PAYLOAD = "<img src=x onerror=\"document.title='pwned'\" id=\"pwned-t\">"
NETWORK = re.compile(r"""(src|href|action|poster|data)\s*=\s*["']?(https?:)?//""")
LINKS_OUT = ('href="https://www.uniprot.org/uniprotkb/', 'href="https://alphafold.ebi.ac.uk/entry/')


def loads_nothing(text: str) -> bool:
    """No element of the page fetches anything; the only absolute URLs are links out to a protein."""
    for allowed in LINKS_OUT:
        text = text.replace(allowed, "")
    return not NETWORK.search(text) and "<link" not in text and "@import" not in text and "url(" not in text


def test_json_for_script_cannot_close_the_script():
    text = json_for_script({"a": "</script><!-- & \u2028\u2029 >"})
    assert text == '{"a":"\\u003c/script\\u003e\\u003c!-- \\u0026 \\u2028\\u2029 \\u003e"}'
    assert json.loads(text) == {"a": "</script><!-- & \u2028\u2029 >"}


def test_html_export_is_self_contained_and_escaped(bundle, exports):  # noqa: F811
    write_export(bundle, "html", exports / "site")
    site = exports / "site"
    assert sorted(p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file()) == [
        "features/11.html", "features/20.html", "features/3.html", "features/7.html", "index.html",
        MANIFEST_NAME,
    ]
    for page in site.rglob("*.html"):
        text = page.read_text()
        assert loads_nothing(text), page
        assert "<script>document.title" not in text
        assert 'id="pwned' not in text
    index = (site / "index.html").read_text()
    data_json = re.search(r'<script type="application/json" id="plmlabel-data">(.*?)</script>', index, re.S)
    assert data_json and "<" not in data_json.group(1) and "&" not in data_json.group(1)
    data = json.loads(data_json.group(1))
    assert [row["feature"] for row in data["features"]] == [3, 7, 11, 20]
    assert data["features"][3]["description"] == PAYLOAD_DESCRIPTION
    assert data["feature_href"] == "features/{n}.html"
    # the Content-Security-Policy allows exactly the viewer's own script
    script = re.search(r"<script>(.*?)</script>", index, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in index
    assert "innerHTML" not in script and "eval(" not in script
    page = (site / "features" / "20.html").read_text()
    assert "&lt;/script&gt;&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=&quot;document.title=&#x27;pwned&#x27;&quot;" in page
    assert html.escape(PAYLOAD_LABEL) in page
    assert "script-src" not in page and "<script" not in page  # feature pages run no script at all
    assert not list(site.glob(".*"))  # the index spool is gone


def test_feature_page_shows_scores_examples_and_scatter(bundle):  # noqa: F811
    page = render_feature(bundle, bundle.features[0])
    assert "<title>Feature 3: Zinc finger C2H2 cysteine (demo)</title>" in page
    assert '<span class="badge ok">validated</span>' in page
    assert "Pearson r<b>0.82</b>" in page and "held-out<b>10</b>" in page
    assert page.count("<circle ") == 9  # ten held-out proteins; two share (0, 0), drawn once, counted
    assert re.search(r'<text class="n" [^>]*>2</text>', page) and "2 protein(s)" in page
    first = bundle.features[0].examples[0]
    # residues 10-12 of the top example are shaded by activation / the feature's max (2.5), in tenths
    shaded = re.findall(r'<b class="l(\d+)" title="(\w)(\d+): ([0-9.]+)">', page)
    assert shaded[:3] == [("6", first.sequence[9], "10", "1.5"), ("10", first.sequence[10], "11", "2.5"),
                          ("3", first.sequence[11], "12", "0.75")]
    assert first.accession in page and "Homo sapiens" in page
    assert "explain_prompt_version</dt><dd>a1b2c3d4" in page
    assert "per-residue" not in page  # no per-residue pass ran: no empty field
    feature = bundle.features[0]
    record = feature.record.model_copy(update={"residue_pearson": 0.61})
    assert "per-residue r<b>0.61</b>" in render_feature(bundle, feature.model_copy(update={"record": record}))


def test_top_quantile_and_silent_examples_are_shown_apart(bundle):  # noqa: F811
    feature = bundle.features[0]
    page = render_feature(bundle, feature)
    top, quantile, silent = (page.index(f'<h3 id="{kind}">') for kind in ("top", "quantile", "silent"))
    assert top < quantile < silent
    silent_example = next(ex for ex in feature.examples if ex.kind == "silent")
    assert page.index(silent_example.accession, silent) > silent  # the silent protein is drawn
    assert "does not fire" in page[silent:]


def test_each_protein_links_to_uniprot_and_alphafold(bundle):  # noqa: F811
    page = render_feature(bundle, bundle.features[0])
    accession = bundle.features[0].examples[0].accession
    assert f'href="https://www.uniprot.org/uniprotkb/{accession}/entry" rel="noopener noreferrer"' in page
    assert f'href="https://alphafold.ebi.ac.uk/entry/{accession}" rel="noopener noreferrer"' in page


def test_concepts_of_the_label_and_f1_associations_are_apart_with_their_meaning(bundle):  # noqa: F811
    page = render_feature(bundle, bundle.features[0])
    named = page.index("<h3>Named by the label</h3>")
    measured = page.index("<h3>Swiss-Prot concept associations")
    assert named < measured
    assert "What the explainer says" in page[named:measured]
    assert "F1 of &quot;activation above the threshold&quot;" in page[measured:]
    assert re.search(r"<tr><td>Zinc finger:C2H2-type</td><td>[^<]*</td><td class=\"num\">0.71</td>", page)


def test_previous_and_next_features_are_linked(bundle, exports):  # noqa: F811
    write_export(bundle, "html", exports / "site")
    pages = {n: (exports / "site" / "features" / f"{n}.html").read_text() for n in (3, 7, 20)}
    assert '<a rel="next" href="7.html">' in pages[3] and "← first" in pages[3]
    assert '<a rel="prev" href="3.html">' in pages[7] and '<a rel="next" href="11.html">' in pages[7]
    assert '<a rel="prev" href="11.html">' in pages[20] and "last →" in pages[20]
    assert '<a href="../index.html">all features</a>' in pages[3]


def test_render_feature_page_takes_its_links_from_the_caller(bundle):  # noqa: F811
    links = Links(feature=lambda n: f"/sae/demo/feature/{n}", index="/sae/demo")
    context = PageContext(sae=bundle.sae, links=links, previous=3, next=11)
    page = render_feature_page(bundle.features[1], context)
    assert '<a rel="prev" href="/sae/demo/feature/3">' in page and '<a href="/sae/demo">' in page
    assert ".html" not in re.sub(r"<style>.*?</style>", "", page, flags=re.S).replace("</html>", "")


def test_histogram_counts_firing_and_silent_proteins():
    hist = histogram(np.array([0.5, 1.0, 2.0, 2.0]), max_activation=2.0, n_proteins=10, bins=4)
    assert hist.counts == [1, 1, 0, 2] and hist.n_silent == 6 and hist.n_proteins == 10
    assert hist.edges == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_the_page_shows_how_often_and_how_strongly_the_feature_fires(bundle):  # noqa: F811
    feature = bundle.features[0].model_copy(update={
        "frac_proteins": 0.4, "frac_residues": 0.0123, "max_activation": 2.5,
        "histogram": ActivationHistogram(edges=[0, 0.5, 1], counts=[3, 1], n_silent=6, n_proteins=10)})
    page = render_feature(bundle, feature)
    assert "proteins firing<b>40.0% (4 of 10)</b>" in page
    assert "residues firing<b>1.23%</b>" in page and "max activation<b>2.500</b>" in page
    assert page.count("<rect ") == 3 and "6 protein(s): never fire (silent)" in page


def test_overlapping_scatter_points_are_counted(bundle):  # noqa: F811
    feature = bundle.features[0]
    same = [PredictionRow(accession=f"P{i:05d}", predicted=0, actual=0.0) for i in range(24)]
    record = feature.record.model_copy(update={"predictions": [*same, PredictionRow(
        accession="Q1", predicted=9, actual=0.9)]})
    page = render_feature(bundle, feature.model_copy(update={"record": record}))
    assert page.count("<circle ") == 2
    assert '<text class="n"' in page and ">24</text>" in page and "24 protein(s)" in page
    assert "25 proteins at 2 spots" in page


def _example(sequence: str, annotations: list[ExportAnnotation], firing: dict[int, float],
             suggestions: list[Suggestion] = ()) -> ExportExample:
    activations = [firing.get(i + 1, 0.0) for i in range(len(sequence))]
    return ExportExample(accession="P12345", sequence=sequence, max_activation=max(activations),
                         normalized=1.0, activations=activations, annotations=annotations,
                         suggestions=list(suggestions))


def _cells(line: str) -> str:
    """A track line's text as displayed (tags removed, entities decoded)."""
    return html.unescape(re.sub(r"<[^>]+>", "", line))


def test_tracks_are_aligned_under_the_ruler_and_residues():
    sequence = "M" + "ACDEFGHIKL" * 7  # 71 residues: two lines of ROW
    ex = _example(sequence, [
        ExportAnnotation(type="Domain", start=5, end=64, description="Zinc finger C2H2-type"),
        ExportAnnotation(type="Binding site", start=12, end=12, description="Zn(2+)"),
        ExportAnnotation(type="Helix", start=3, end=8),
        ExportAnnotation(type="Disulfide bond", start=2, end=70),
        ExportAnnotation(type="Chain", start=1, end=71, description="not drawn"),
    ], {12: 2.0})
    out = sequence_tracks_html(ex, 2.0)
    lines = re.findall(r'<div class="(ruler|res|lane)">(.*?)</div>', out)
    kinds = [k for k, _ in lines]
    assert kinds[:2] == ["ruler", "res"] and "lane" in kinds and "not drawn" not in out
    first_row = [_cells(body) for _, body in lines[: kinds.index("ruler", 1)]]
    ruler, residues, *lanes = first_row
    assert ruler.startswith(" " * GUTTER + "1         11        21")
    assert residues[GUTTER:] == sequence[:ROW]
    domain = next(lane for lane in lanes if lane.startswith("Domains"))
    assert domain[GUTTER + 4:GUTTER + 4 + 21] == "Zinc finger C2H2-type"  # starts under residue 5
    assert domain[GUTTER + 3] == " "
    site = next(lane for lane in lanes if lane.startswith("Sites"))
    assert site[GUTTER + 11] == "B" and site[GUTTER + 1] == "C"  # binding site at 12, cysteine at 2
    helix = next(lane for lane in lanes if lane.startswith("2° struct"))
    assert helix[GUTTER + 2:GUTTER + 8] == "======"
    assert all(len(line) <= GUTTER + ROW for line in first_row)
    assert 'title="Domain 5-64: Zinc finger C2H2-type"' in out
    assert '<b class="l10" title="A12: 2">A</b>' in out  # residue 12 is A, firing at the max


def test_long_sequences_show_a_window_around_the_peak():
    sequence = "ACDEFGHIKLMNPQRSTVWY" * 50  # 1000 residues
    out = sequence_tracks_html(_example(sequence, [], {800: 1.0}), 1.0)
    assert "Residues 650-949 of 1000, around the peak." in out
    assert html.unescape(re.sub(r"<[^>]+>", "", re.findall(r'<div class="ruler">(.*?)</div>', out)[0])
                         ).strip().startswith("650")


def test_untrusted_annotation_and_suggestion_text_is_escaped():
    suggestion = Suggestion(sae_id="demo", feature=3, accession="P12345", concept=PAYLOAD, kind="residue",
                            residues=((2, 4),), activation=1.0, normalized=0.5, evidence=Evidence(f1=0.8),
                            rank_score=0.7)
    domain = ExportAnnotation(type="Domain", start=1, end=9, description=PAYLOAD)
    ex = _example("ACDEFGHIK", [domain], {2: 1.0}, [suggestion])
    out = sequence_tracks_html(ex, 1.0)
    assert "<img" not in out and "&lt;img" in out and "Suggested" in out


def test_agent_trace_and_both_scores_are_shown_and_escaped(bundle):  # noqa: F811
    feature = bundle.features[0]
    trace = {
        "version": 1,
        "oneshot": {"label": "Zinc finger", "description": "one-shot " + PAYLOAD, "validation_r": 0.41},
        "steps": [
            {"kind": "hypothesis", "label": "C2H2 cysteines", "description": "second idea",
             "validation_r": 0.63},
            {"kind": "tool", "tool": "simulate", "args": {"text": PAYLOAD}, "summary": "r=0.63 " + PAYLOAD,
             "ok": True},
            {"kind": "tool", "tool": "search_proteins", "args": {}, "summary": "no match", "ok": False},
            {"kind": "note", "text": "thinking " + PAYLOAD},
            "not an object",
        ],
        "committed": {"label": "C2H2 cysteines", "description": "final", "concepts": [], "confidence": 0.8,
                      "validation_r": 0.63, "source": "agent"},
        "stopped": "committed", "reason": None, "tool_calls": 2, "simulations": 1, "turns": 3, "agent": "llm",
    }
    record = feature.record.model_copy(update={"trace": json.dumps(trace), "oneshot_pearson": 0.38})
    page = render_feature(bundle, feature.model_copy(update={"record": record}))
    assert "<h2>Agent trace</h2>" in page
    assert "one-shot test r<b>0.38</b>" in page and "final test r<b>0.82</b>" in page
    assert "one-shot r<b>0.38</b>" in page  # beside the scores at the top too
    section = page[page.index("<h2>Agent trace</h2>"):]
    order = [section.index(text) for text in ("one-shot ", "C2H2 cysteines", "simulate", "search_proteins",
                                              "thinking", "kind\">committed")]
    assert order == sorted(order)
    assert "validation r 0.63" in section and '<span class="badge no">failed</span>' in section
    assert "2 tool calls, 1 simulations, 3 turns" in section
    assert "<img" not in page and 'id="pwned' not in page
    broken = feature.record.model_copy(update={"trace": "{not json"})
    assert "could not be read" in render_feature(bundle, feature.model_copy(update={"record": broken}))
    assert "Agent trace" not in render_feature(bundle, feature)  # no trace, no section


def test_suggestions_of_the_feature_are_listed_and_escaped(bundle):  # noqa: F811
    feature = bundle.features[0]
    suggestion = Suggestion(sae_id="demo", feature=3, accession="Q9XYZ1", concept=PAYLOAD, kind="residue",
                            residues=((5, 9), (12, 12)), activation=2.0, normalized=0.8,
                            evidence=Evidence(precision=0.9, recall=0.7, f1=0.79), rank_score=0.654)
    page = render_feature(bundle, feature.model_copy(update={"suggestions": [suggestion]}))
    section = page[page.index("<h2>Suggested missing annotations</h2>"):]
    assert "5-9,12" in section and "0.654" in section and "0.79" in section
    assert 'href="https://www.uniprot.org/uniprotkb/Q9XYZ1/entry"' in section
    assert "<img" not in page and html.escape(PAYLOAD) in section
    assert "Suggested missing annotations" not in render_feature(bundle, feature)


def test_index_counts_and_rows(bundle):  # noqa: F811
    index = render_index(bundle)
    assert "4 labels, 3 validated." in index
    assert "<title>plmlabel: demo</title>" in index
    data = json.loads(re.search(r'id="plmlabel-data">(.*?)</script>', index, re.S).group(1))
    row = data["features"][0]
    assert row["top_concept"] == "Zinc finger:C2H2-type" and row["n_suggestions"] == 0


# --- from a real activation index, through the command ---------------------------------------------
def _label_planted(ws, features=(0, 1, 2)) -> None:
    """Labels for planted features (0 transmembrane, 1 zinc finger, 2 cysteine) and one suggestion."""
    from storage.labels import LabelRecord, save_label
    from storage.suggestions import write_suggestions

    with ws.db() as db:
        for n in features:
            save_label(db, LabelRecord(sae_id="planted", feature=n, label=f"planted {n}", description=PAYLOAD,
                                       pearson=0.5 + n / 10, validated=n != 2),
                       [PredictionRow(accession="P0A7A9", predicted=3, actual=0.2)])
        accession = db.execute("select accession from proteins order by accession limit 1").fetchone()[0]
        write_suggestions(db, "planted", [Suggestion(
            sae_id="planted", feature=1, accession=accession, concept="Zinc finger " + PAYLOAD,
            kind="residue",
            residues=((3, 9),), activation=1.0, normalized=0.9, evidence=Evidence(f1=0.8), rank_score=0.9)])


@pytest.mark.slow  # builds the planted index once per process (about 20 s on a busy machine)
def test_export_cli_reads_examples_histogram_and_tracks_from_the_index(swissprot_dir, tmp_path, cli):
    from tests.index_fixtures import copy_template

    ws = copy_template(swissprot_dir, tmp_path / "ws")
    _label_planted(ws)
    result = cli("export", "planted", "--format", "html", "--out", tmp_path / "site", "--workspace", ws.root)
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    site = tmp_path / "site"
    tm, zf = ((site / "features" / f"{n}.html").read_text() for n in (0, 1))
    for page in (tm, zf):
        assert loads_nothing(page) and "<img" not in page and 'id="pwned' not in page
        assert page.count("<rect ") == 21  # the silent bar and 20 bins
        assert '<h3 id="top">' in page and '<h3 id="silent">' in page
    assert re.search(r'<span class="reg" title="Transmembrane \d+-\d+', tm)  # the TM region is drawn
    assert re.search(r'<span class="dom" title="Zinc finger \d+-\d+', zf)
    assert re.search(r"proteins firing<b>[0-9.]+% \(\d+ of \d+\)</b>", tm)
    with ws.db() as db:
        n_proteins = db.execute("select count(*) from proteins").fetchone()[0]
    assert f"of {n_proteins})" in tm
    assert "<h2>Suggested missing annotations</h2>" in zf and "Suggested missing" not in tm
    data = json.loads(re.search(r'id="plmlabel-data">(.*?)</script>', (site / "index.html").read_text(),
                                re.S).group(1))
    assert [r["feature"] for r in data["features"]] == [0, 1, 2]
    assert [r["n_suggestions"] for r in data["features"]] == [0, 1, 0]
    result = cli("export", "planted", "--format", "interprot", "--out", tmp_path / "viz",
                 "--workspace", ws.root)
    assert result.exit_code == 0, result.stderr
    viz = json.loads((tmp_path / "viz" / "0.json").read_text())
    assert viz["n_seqs"] > 0 and sum(len(r["examples"]) for r in viz["ranges"].values()) > 0
    # what `serve` calls for one page: the same feature, the same neighbours
    from agent.export_bundle import load_export_feature
    from storage.export import export_sae, neighbour_features

    with ws.db() as db:
        one = load_export_feature(ws, db, "planted", 1)
        assert load_export_feature(ws, db, "planted", 5) is None  # no label
        assert neighbour_features(db, "planted", 1) == (0, 2)
        assert neighbour_features(db, "planted", 0, validated_only=True) == (None, 1)
        context = PageContext(sae=export_sae(db, "planted"), links=Links.static_from_feature_page(),
                              previous=0, next=2)
    assert one is not None and one.examples and one.histogram is not None
    assert render_feature_page(one, context) == zf
