"""Missing-annotation suggestions: scoring rules, hidden annotations recovered, files, the command, show."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from sae.concept_vocab import concept_names
from sae.suggest import store_suggestions, suggest
from sae.suggest_score import (
    ConceptAssociation,
    FeatureLabel,
    firing_ranges,
    label_names,
    min_activation,
    rank_score,
    trusted_concepts,
)
from storage.errors import InputError
from storage.suggestions import (
    Evidence,
    Suggestion,
    list_suggestions,
    safe_cell,
    suggestions_gff3,
    suggestions_tsv,
    write_suggestions,
)
from storage.workspace import Workspace
from tests.suggest_fixtures import SAE_ID, build_hidden_workspace

# --- pure rules ----------------------------------------------------------------------------------------


def test_firing_ranges_merge_small_gaps():
    acts = np.array([0, 0.9, 0.8, 0, 0, 0.7, 0, 0, 0, 0, 0.6, 0.1])
    assert firing_ranges(acts, 0.5) == [(2, 6), (11, 11)]
    assert firing_ranges(acts, 0.5, max_gap=0) == [(2, 3), (6, 6), (11, 11)]
    assert firing_ranges(np.zeros(4), 0.0) == []


@pytest.mark.parametrize("concept,texts,expected", [
    ("Zinc finger: C2H2-type", ["C2H2-type zinc finger"], True),
    ("Zinc finger: C2H2-type", ["zinc finger"], False),  # the bare type of a subtyped concept is not enough
    ("Transmembrane", ["transmembrane helix"], True),
    ("Coiled coil", ["Coiled coil"], True),
    ("Binding site: ATP", ["ATP binding"], True),
    ("Signal", ["kinase"], False),
])
def test_label_names_a_concept(concept, texts, expected):
    assert label_names(concept, texts) is expected


def _assoc(feature, concept, f1, kind="region"):
    return ConceptAssociation(feature=feature, concept=concept, kind=kind, threshold=0.15, f1_test=f1,
                              precision_test=f1, recall_test=f1)


def test_trust_modes():
    rows = [_assoc(0, "Transmembrane", 0.8), _assoc(1, "Zinc finger", 0.2), _assoc(2, "Signal", 0.9),
            _assoc(3, "Amino acid: C", 0.95, "amino_acid")]
    labels = {1: FeatureLabel(1, "zinc finger", ("Zinc finger",), 0.7, True),
              2: FeatureLabel(2, "signal peptide", ("signal",), 0.6, False)}  # not validated

    def pick(mode):
        return [(t.association.feature, t.by_f1, t.label is not None)
                for t in trusted_concepts(rows, labels, min_f1=0.5, mode=mode)]

    assert pick("f1") == [(0, True, False), (2, True, False)]
    assert pick("label") == [(1, False, True)]
    assert pick("either") == [(0, True, False), (1, False, True), (2, True, False)]
    assert pick("both") == []
    strength = trusted_concepts(rows, labels, min_f1=0.5, mode="label")[0].strength
    assert strength == 0.7


def test_min_activation_and_rank():
    assert min_activation(np.array([0.1, 0.5, 0.6, 0.9]), 0.0) == 0.1
    assert min_activation(np.array([0.0, 0.5, 0.6, 0.9]), 0.5) == 0.6
    assert min_activation(np.array([0.0]), 0.1) is None
    assert rank_score(0.8, 0.3, 0.6) == 0.4
    assert rank_score(0.8, 0.9, 0.6) == 0.8


@pytest.mark.parametrize("value,cell", [
    ("=HYPERLINK(\"x\")", "'=HYPERLINK(\"x\")"), ("+1+2", "'+1+2"), ("-3", "-3"), ("-cmd", "'-cmd"),
    ("@SUM(A1)", "'@SUM(A1)"), ("\tx", "' x"), ("\rx", "' x"), (-0.5, "-0.5"), ("a\nb", "a b"),
    ("ok\x07", "ok"), (None, ""),
])
def test_safe_cell(value, cell):
    assert safe_cell(value) == cell


# --- on planted features with hidden annotations -----------------------------------------------------


@pytest.fixture(scope="module")
def hidden(tmp_path_factory):
    from tests.index_fixtures import sample_proteins, shared_swissprot

    root = tmp_path_factory.mktemp("suggest") / "ws"
    workspace = Workspace(root)
    workspace.init()
    truth = build_hidden_workspace(workspace, sample_proteins(shared_swissprot()),
                                   ["Transmembrane", "Zinc finger"], seed=0)
    return workspace, truth


@pytest.fixture
def hidden_copy(hidden, tmp_path):
    workspace, truth = hidden
    shutil.copytree(workspace.root, tmp_path / "ws")
    return Workspace(tmp_path / "ws"), truth


def test_suggestions_recover_hidden_annotations(hidden):
    workspace, truth = hidden
    report = suggest(workspace, SAE_ID, features=[0, 1])
    figures = truth.score(report.suggestions)
    assert figures["n_hidden"] >= 20
    assert figures["precision"] >= 0.8 and figures["recall"] >= 0.6, figures
    with workspace.db() as db:
        from storage.proteins import get_proteins

        proteins = get_proteins(db, {s.accession for s in report.suggestions})
    for s in report.suggestions:
        annotated = {n for f in proteins[s.accession].features for n in concept_names(f)}
        assert s.concept not in annotated  # never suggests what is annotated
        assert s.residues and all(1 <= a <= b <= proteins[s.accession].length for a, b in s.residues)
        assert s.evidence.f1 is not None and s.evidence.f1 >= 0.5 and 0 < s.rank_score <= 1
    scores = [s.rank_score for s in report.suggestions]
    assert scores == sorted(scores, reverse=True)


def test_hidden_tm_residues_are_where_swissprot_had_them(hidden, swissprot_dir):
    """A recovered transmembrane suggestion points at the residues the removed annotation covered."""
    from tests.index_fixtures import sample_proteins

    workspace, truth = hidden
    original = {p.accession: p for p in sample_proteins(swissprot_dir)}
    report = suggest(workspace, SAE_ID, features=[0])
    recovered = [s for s in report.suggestions if (s.accession, 0) in truth.hidden]
    assert recovered
    for s in recovered:
        annotated = set(truth.concepts[0].positions(original[s.accession], __import__("random").Random(0)))
        suggested = {p for a, b in s.residues for p in range(a, b + 1)}
        assert len(suggested & annotated) >= 0.8 * len(suggested)


def test_an_independent_planted_set(tmp_path, swissprot_dir):
    from tests.planted import load_proteins

    workspace = Workspace(tmp_path / "ws")
    workspace.init()
    proteins = tuple(p for p in load_proteins(swissprot_dir) if 30 <= p.length <= 600)[:500]
    truth = build_hidden_workspace(workspace, proteins, ["Signal peptide", "Coiled coil"], seed=7,
                                   hide_fraction=0.3)
    figures = truth.score(suggest(workspace, SAE_ID, features=[0, 1]).suggestions)
    assert figures["precision"] >= 0.7 and figures["recall"] >= 0.5, figures


def test_suggestions_never_touch_swissprot(hidden_copy):
    workspace, _ = hidden_copy
    with workspace.db() as db:
        before = (db.query("select count(*) n from features")[0]["n"],
                  db.query("select group_concat(content_hash) h from proteins")[0]["h"])
        store_suggestions(db, suggest(workspace, SAE_ID))
        after = (db.query("select count(*) n from features")[0]["n"],
                 db.query("select group_concat(content_hash) h from proteins")[0]["h"])
    assert before == after


def test_store_replaces_only_the_features_asked_for(hidden_copy):
    workspace, _ = hidden_copy
    with workspace.db() as db:
        store_suggestions(db, suggest(workspace, SAE_ID))
        n_other = len([s for s in list_suggestions(db, SAE_ID) if s.feature != 1])
        store_suggestions(db, suggest(workspace, SAE_ID, features=[1], limit=2))
        stored = list_suggestions(db, SAE_ID)
    assert len([s for s in stored if s.feature == 1]) == 2
    assert len([s for s in stored if s.feature != 1]) == n_other


def test_label_evidence(hidden_copy):
    """A validated label naming the concept is enough with --by label, and shows in the evidence."""
    from storage.labels import LabelRecord, PredictionRow, save_label

    workspace, _ = hidden_copy
    with workspace.db() as db:
        save_label(db, LabelRecord(sae_id=SAE_ID, feature=1, label="C2H2-like zinc finger",
                                   concepts=["zinc finger"], pearson=0.77, validated=True),
                   [PredictionRow(accession="P00001", predicted=1.0, actual=0.5)])
    report = suggest(workspace, SAE_ID, mode="label")
    assert report.features == [1]
    assert {s.evidence.label for s in report.suggestions} == {"C2H2-like zinc finger"}
    assert all(s.evidence.label_score == 0.77 for s in report.suggestions)
    with pytest.raises(InputError, match="feature 0 of SAE 'hidden' has no concept association with "
                                         "test F1 >= 0.5 that a validated label also names"):
        suggest(workspace, SAE_ID, features=[0], mode="both")


# --- files -----------------------------------------------------------------------------------------


def _suggestion(**kw):
    base = dict(sae_id="s", feature=3, accession="P12345", concept="Zinc finger: C2H2;type=x",
                kind="region", residues=((5, 9), (20, 20)), activation=2.5, normalized=0.5,
                evidence=Evidence(precision=0.9, recall=0.8, f1=0.85, label="=cmd|' /C calc'!A0"),
                rank_score=0.7)
    return Suggestion(**{**base, **kw})


def test_tsv_is_spreadsheet_safe():
    text = suggestions_tsv([_suggestion()])
    header, row = text.splitlines()
    cells = dict(zip(header.split("\t"), row.split("\t"), strict=True))
    assert cells["label"] == "'=cmd|' /C calc'!A0" and cells["residues"] == "5-9,20" and cells["f1"] == "0.85"


def test_gff3_reads_back_with_gffutils(tmp_path):
    import gffutils

    text = suggestions_gff3([_suggestion(), _suggestion(accession="Q99999", residues=())],
                            {"P12345": 120, "Q99999": 40})
    db = gffutils.create_db(text, ":memory:", from_string=True, merge_strategy="create_unique")
    features = sorted(db.all_features(), key=lambda f: (f.seqid, f.start))
    assert [(f.seqid, f.start, f.end) for f in features] == [("P12345", 5, 9), ("P12345", 20, 20),
                                                            ("Q99999", 1, 40)]
    assert features[0].attributes["concept"] == ["Zinc finger: C2H2;type=x"]
    assert features[0].attributes["label"] == ["=cmd|' /C calc'!A0"]
    assert features[0].source == "plmlabel" and float(features[0].score) == 0.5


def test_write_refuses_foreign_rows():
    from storage.db import Database

    db = Database.open(":memory:")
    with pytest.raises(ValueError):
        write_suggestions(db, "other", [_suggestion()])


# --- the command -----------------------------------------------------------------------------------


def test_suggest_command_outputs(cli, hidden_copy, tmp_path):
    workspace, _ = hidden_copy
    ws = ["-w", str(workspace.root)]
    result = cli("suggest", SAE_ID, "--feature", "0", "--json", *ws)
    assert result.exit_code == 0, result.stderr
    items = json.loads(result.stdout)
    assert items and set(items[0]) >= {"feature", "accession", "concept", "residues", "activation",
                                       "evidence", "rank_score"}
    assert set(items[0]["evidence"]) >= {"precision", "recall", "f1", "label", "label_score"}
    tsv = cli("suggest", SAE_ID, "--feature", "0", "--tsv", *ws)
    assert tsv.exit_code == 0 and tsv.stdout.splitlines()[0].startswith("feature\taccession\tconcept")
    assert len(tsv.stdout.splitlines()) == len(items) + 1
    gff = tmp_path / "out.gff3"
    table = cli("suggest", SAE_ID, "--gff3", str(gff), *ws)
    assert table.exit_code == 0 and "suggestions from" in table.stdout
    assert gff.read_text().startswith("##gff-version 3\n")
    with workspace.db() as db:
        assert list_suggestions(db, SAE_ID)


@pytest.mark.parametrize("args,message", [
    (["--feature", "3"], "nothing to suggest: feature 3 of SAE 'hidden' has no"),
    (["--min-f1", "1.0", "--by", "f1"], "nothing to suggest: the features of SAE 'hidden' have no concept"),
    (["--min-f1", "nan"], "--min-f1 must be a number between 0 and 1"),
    (["--feature", "99"], "out of range"),
    (["--json", "--tsv"], "choose one of --json and --tsv"),
])
def test_suggest_command_bad_input(cli, hidden_copy, args, message):
    workspace, _ = hidden_copy
    result = cli("suggest", SAE_ID, *args, "-w", str(workspace.root))
    assert result.exit_code == 2, result.stdout
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    with workspace.db() as db:
        assert not list_suggestions(db, SAE_ID)


def test_suggest_without_concepts(cli, workspace, swissprot_dir):
    from tests.index_fixtures import copy_template

    ws = copy_template(swissprot_dir, workspace.root.parent / "planted")
    result = cli("suggest", "planted", "-w", str(ws.root))
    assert result.exit_code == 2
    assert "has no concept associations; run `plmlabel concepts planted` first" in result.stderr


def test_show_lists_suggestions_as_plain_text(cli, hidden_copy):
    from storage.labels import LabelRecord, save_label

    workspace, _ = hidden_copy
    with workspace.db() as db:
        save_label(db, LabelRecord(sae_id=SAE_ID, feature=0, label="transmembrane [bold red]x[/]",
                                   concepts=["Transmembrane"], pearson=0.8, validated=True), [])
        store_suggestions(db, suggest(workspace, SAE_ID, features=[0]))
        first = list_suggestions(db, SAE_ID, 0)[0]
        db.execute("update suggestions set concept = ? where accession = ? and feature = 0 and concept = ?",
                   ("[red]Evil\x1b[2J", first.accession, first.concept))
    result = cli("show", SAE_ID, "0", "-w", str(workspace.root))
    assert result.exit_code == 0, result.stderr
    assert "Suggested missing annotations" in result.stdout and first.accession in result.stdout
    assert "[red]Evil" in result.stdout and "\x1b[2J" not in result.stdout
    data = json.loads(cli("show", SAE_ID, "0", "--json", "-w", str(workspace.root)).stdout)
    assert data["suggestions"] and data["suggestions"][0]["feature"] == 0
