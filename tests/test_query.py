"""`plmlabel query` and `plmlabel show`: FTS ranking, filters, literal user text, exact outputs, errors.

`seed_labels` also feeds tests/test_export.py and tests/test_viewer_chromium.py.
"""

from __future__ import annotations

import json

import pytest

from agent.cli.query_cmd import text_scatter
from storage.db import Database
from storage.search import LabelQuery, fts_phrase_query, search_labels
from storage.workspace import Workspace

# A label and a description that try to run script in a viewer, and one that tries rich markup.
PAYLOAD_LABEL = "<img src=x onerror=\"document.title='pwned'\" id=\"pwned-img\"> kinase"
PAYLOAD_DESCRIPTION = (
    "</script><script>document.title='pwned'</script><b id=\"pwned-b\">ATP kinase</b> "
    "\u2028 & <!-- comment --> done"
)

PROVENANCE = {
    "backend": "anthropic",
    "explainer_model": "claude-sonnet-4-5",
    "simulator_model": "claude-haiku-4-5",
    "explain_prompt": "explain",
    "explain_prompt_version": "a1b2c3d4",
    "simulate_prompt": "simulate",
    "simulate_prompt_version": "e5f6a7b8",
    "input_tokens": 12345,
    "output_tokens": 678,
    "cost_usd": 0.0421,
    "run_id": "run-1",
    "created_at": "2025-01-02T03:04:05+00:00",
}

LABELS = [
    # sae_id, feature, status, label, description, concepts, pearson, spearman, n_heldout, validated
    ("demo", 3, "ok", "Zinc finger C2H2 cysteine",
     "Fires on the cysteines and histidines of C2H2 zinc finger domains that bind zinc ions.",
     ["Zinc finger", "Metal binding"], 0.82, 0.79, 10, 1),
    ("demo", 7, "ok", "Transmembrane helix",
     "Hydrophobic membrane-spanning helices; a few transporters also bind zinc.",
     ["Transmembrane"], 0.64, 0.6, 24, 1),
    ("demo", 11, "ok", "[red]Signal[/red] peptide",
     "[bold]Signal[/bold] peptides at the N-terminus of secreted proteins.", [], 0.31, 0.35, 24, 0),
    ("demo", 12, "failed", None, None, [], None, None, None, 0),
    ("demo", 20, "ok", PAYLOAD_LABEL, PAYLOAD_DESCRIPTION, ["<i>kinase</i>"], 0.55, 0.5, 24, 1),
    ("other", 1, "ok", "Zinc ribbon", "Zinc ribbon motifs.", ["Zinc finger"], 0.9, 0.88, 24, 1),
]

# Held-out predictions of demo feature 3: (accession, predicted 0-10, actual normalised).
PREDICTIONS_3 = [
    ("P0A7A9", 9.0, 0.95), ("P02829", 8.0, 0.8), ("Q9Y2K1", 7.0, 0.74), ("P0CG48", 4.0, 0.41),
    ("P62988", 3.0, 0.22), ("O15392", 1.0, 0.1), ("P68871", 0.0, 0.0), ("P69905", 0.0, 0.0),
    ("P01308", 1.0, 0.0), ("P00533", 2.0, 0.05),
]


def seed_labels(db: Database) -> None:
    """Two SAEs, labels (one failed, one with a script payload), predictions, concepts, statistics."""
    for sae_id, d_sae in (("demo", 64), ("other", 32)):
        db.table("saes").insert({
            "sae_id": sae_id, "architecture": "topk", "d_in": 320, "d_sae": d_sae, "k": 8,
            "plm_model": "esm2_t6_8M_UR50D", "layer": 4, "source": "trained", "path": f"saes/{sae_id}",
            "weights_hash": "0" * 64, "cfg": "{}",
            "created_at": "2025-01-01T00:00:00+00:00",
        })
    db.table("runs").insert({"run_id": "run-1", "sae_id": "demo", "kind": "label", "status": "completed",
                             "args": json.dumps({"features": "all"})})
    for sae_id, feature, status, label, description, concepts, pearson, spearman, n, validated in LABELS:
        db.table("labels").insert({
            "sae_id": sae_id, "feature": feature, "status": status, "label": label,
            "description": description, "concepts": json.dumps(concepts), "confidence": 0.7,
            "pearson": pearson, "spearman": spearman, "residue_pearson": None, "n_heldout": n,
            "validated": validated, "error": "explainer returned no JSON" if status == "failed" else None,
            **PROVENANCE,
        })
    label_id = db.query("select id from labels where sae_id = 'demo' and feature = 3")[0]["id"]
    db.table("predictions").insert_all(
        {"label_id": label_id, "accession": acc, "predicted": pred, "actual": actual,
         "actual_raw": actual * 2.5}
        for acc, pred, actual in PREDICTIONS_3
    )
    db.table("feature_concepts").insert_all([
        {"sae_id": "demo", "feature": 7, "concept": "Transmembrane:Helical", "rank": 1, "threshold": 0.5,
         "f1_valid": 0.6, "f1_test": 0.58, "precision_test": 0.7, "recall_test": 0.5},
        {"sae_id": "demo", "feature": 3, "concept": "Zinc finger:C2H2-type", "rank": 1, "threshold": 0.4,
         "f1_valid": 0.75, "f1_test": 0.71, "precision_test": 0.8, "recall_test": 0.64},
    ])
    db.table("sae_features").insert_all([
        {"sae_id": "demo", "feature": 3, "max_activation": 2.5, "frac_residues": 0.001, "frac_proteins": 0.04,
         "quantiles": "[]",
         "top_concepts": json.dumps([{"concept": "Zinc finger:C2H2-type", "f1_test": 0.71}])},
        {"sae_id": "demo", "feature": 7, "max_activation": 1.25, "frac_residues": 0.01, "frac_proteins": 0.2,
         "quantiles": "[]", "top_concepts": "[]"},
    ])


@pytest.fixture
def seeded(workspace: Workspace) -> Workspace:
    with workspace.db() as db:
        seed_labels(db)
    return workspace


def _features(hits) -> list[tuple[str, int]]:
    return [(hit.sae_id, hit.feature) for hit in hits]


def _query(ws: Workspace, **kwargs) -> list[tuple[str, int]]:
    with ws.db() as db:
        return _features(search_labels(db, LabelQuery(**kwargs)))


# --- the library -------------------------------------------------------------------------------------
def test_fts_phrase_query_quotes_every_token():
    assert fts_phrase_query('"zinc" AND (') == '"""zinc""" "AND" "("'
    assert fts_phrase_query("  zinc   finger ") == '"zinc" "finger"'
    assert fts_phrase_query("") == ""


def test_label_matches_rank_above_description_matches(seeded):
    assert _query(seeded, text="zinc", sae_id="demo") == [("demo", 3), ("demo", 7)]
    hits = _query(seeded, text="zinc")
    assert set(hits) == {("demo", 3), ("demo", 7), ("other", 1)}
    assert hits[-1] == ("demo", 7)  # zinc only in its description


def test_search_stems_words(seeded):
    assert _query(seeded, text="fingers binding", sae_id="demo") == [("demo", 3)]


def test_empty_text_lists_by_score_and_skips_failed(seeded):
    assert _query(seeded) == [("other", 1), ("demo", 3), ("demo", 7), ("demo", 20), ("demo", 11)]
    assert _query(seeded, include_failed=True, sae_id="demo")[-1] == ("demo", 12)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"validated": True, "sae_id": "demo"}, [("demo", 3), ("demo", 7), ("demo", 20)]),
        ({"min_score": 0.6}, [("other", 1), ("demo", 3), ("demo", 7)]),
        ({"concept": "helical"}, [("demo", 7)]),  # a Swiss-Prot concept from feature_concepts
        ({"concept": "ZINC FINGER"}, [("other", 1), ("demo", 3)]),  # label concepts, any case
        ({"concept": "%"}, []),  # a LIKE wildcard is a literal character
        ({"limit": 2}, [("other", 1), ("demo", 3)]),
        ({"text": "zinc", "min_score": 0.85}, [("other", 1)]),
    ],
)
def test_filters(seeded, kwargs, expected):
    assert _query(seeded, **kwargs) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('"zinc" AND (', [("demo", 3)]),  # literal words zinc + and; "(" carries no word
        ("zinc*", [("demo", 3), ("demo", 7)]),  # no prefix search: the same as zinc
        ("NEAR", []),
        ("NOT zinc", []),
        ("zinc OR transmembrane", []),  # OR is a word to find, not an operator
        ('zinc"', [("demo", 3), ("demo", 7)]),
        ('"', []),
        ("(", []),
        ("*", []),
        ("label:zinc", []),
        ("-zinc", [("demo", 3), ("demo", 7)]),
        ("^zinc", [("demo", 3), ("demo", 7)]),
        ("'); drop table labels; --", []),
        ("<script>", [("demo", 20)]),  # "script" is in the payload description
    ],
)
def test_fts_syntax_is_searched_literally(seeded, cli, text, expected):
    result = cli("query", "--sae", "demo", "--workspace", seeded.root, "--json", "--", text)
    assert result.exit_code == 0, result.stderr
    assert [(row["sae_id"], row["feature"]) for row in result.json()] == expected
    with seeded.db() as db:
        assert db.query("select count(*) as n from labels")[0]["n"] == len(LABELS)


# --- the command -------------------------------------------------------------------------------------
def test_query_json_is_exact(seeded, cli):
    result = cli("query", "--sae", "demo", "--validated", "--limit", "1", "--workspace", seeded.root,
                 "--json")
    assert result.exit_code == 0
    assert result.stderr == ""
    assert result.json() == [
        {
            "sae_id": "demo", "feature": 3, "status": "ok", "label": "Zinc finger C2H2 cysteine",
            "description": LABELS[0][4], "concepts": ["Zinc finger", "Metal binding"], "pearson": 0.82,
            "spearman": 0.79, "n_heldout": 10, "validated": True, "backend": "anthropic",
            "explainer_model": "claude-sonnet-4-5", "created_at": "2025-01-02T03:04:05+00:00", "rank": None,
        }
    ]


def test_query_json_text_has_bm25_rank(seeded, cli):
    rows = cli("query", "zinc", "--sae", "demo", "--workspace", seeded.root, "--json").json()
    assert [row["feature"] for row in rows] == [3, 7]
    assert rows[0]["rank"] < rows[1]["rank"] < 0  # bm25: lower is better


def test_query_csv_is_exact(seeded, cli):
    result = cli("query", "--sae", "demo", "--min-score", "0.6", "--workspace", seeded.root, "--csv")
    assert result.exit_code == 0
    assert result.stdout == (
        "sae_id,feature,label,pearson,spearman,n_heldout,validated,status,description\n"
        "demo,3,Zinc finger C2H2 cysteine,0.82,0.79,10,true,ok,"
        "Fires on the cysteines and histidines of C2H2 zinc finger domains that bind zinc ions.\n"
        "demo,7,Transmembrane helix,0.64,0.6,24,true,ok,"
        "Hydrophobic membrane-spanning helices; a few transporters also bind zinc.\n"
    )


def test_query_csv_quotes_awkward_text(seeded, cli):
    result = cli("query", "kinase", "--workspace", seeded.root, "--csv")
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(row["feature"], row["label"], row["description"]) for row in rows] == [
        ("20", PAYLOAD_LABEL, PAYLOAD_DESCRIPTION)
    ]


def test_query_table_prints_text_literally(seeded, cli):
    result = cli("query", "signal", "--workspace", seeded.root)
    assert result.exit_code == 0
    assert "[red]Signal[/red]" in result.stdout  # rich markup in data is shown, not applied
    assert "Zinc" not in result.stdout


def test_query_without_hits_says_so(seeded, cli):
    result = cli("query", "ribosome", "--workspace", seeded.root)
    assert (result.exit_code, result.stdout) == (0, "No labels match 'ribosome'.\n")
    assert cli("query", "ribosome", "--workspace", seeded.root, "--json").json() == []
    assert cli("query", "ribosome", "--workspace", seeded.root, "--csv").stdout == (
        "sae_id,feature,label,pearson,spearman,n_heldout,validated,status,description\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sae", "nope"], "error: no SAE named 'nope'; known: demo, other."),
        (["--json", "--csv"], "error: choose one of --json and --csv."),
        (["--limit", "0"], "Invalid value for '--limit'"),
    ],
)
def test_query_bad_input_is_one_line_exit_2(seeded, cli, args, message):
    result = cli("query", "zinc", *args, "--workspace", seeded.root)
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_query_outside_a_workspace_fails_cleanly(tmp_path, cli):
    result = cli("query", "zinc", "--workspace", tmp_path / "none")
    assert result.exit_code == 2
    assert "is not a plmlabel workspace" in result.stderr


# --- show ----------------------------------------------------------------------------------------------
def test_text_scatter_is_exact():
    lines = text_scatter([0.0, 1.0, 0.5, 0.5], [0.0, 10.0, 5.0, 5.0], width=11, height=5)
    assert lines == [
        "   10 ┤          •",
        "      │           ",
        "    5 ┤     2     ",
        "      │           ",
        "    0 ┤•          ",
        "      └───────────",
        "       0   0.5   1",
    ]


def test_show_prints_label_scores_provenance_and_plot(seeded, cli):
    result = cli("show", "demo", "3", "--workspace", seeded.root)
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "Feature 3 of SAE demo" in out
    assert "Zinc finger C2H2 cysteine" in out
    assert "validated · Pearson r 0.82 · Spearman 0.79 · 10 held-out" in out and "per-residue" not in out
    for text in ("claude-sonnet-4-5", "claude-haiku-4-5", "explain@a1b2c3d4", "simulate@e5f6a7b8",
                 "12,345 in / 678 out", "$0.0421", "run-1", "2025-01-02T03:04:05+00:00"):
        assert text in out
    assert "Held-out proteins (n=10)" in out
    plot = [line for line in out.splitlines() if "┤" in line or "│" in line]
    assert len(plot) == 11
    assert plot[1].rstrip().endswith("•")  # predicted 9 at actual 0.95, near the top right
    assert "No examples: SAE 'demo' has no activation index; run `plmlabel index demo` first." in out


def test_show_json(seeded, cli):
    data = cli("show", "demo", "3", "--workspace", seeded.root, "--json").json()
    assert data["label"] == "Zinc finger C2H2 cysteine"
    assert data["validated"] is True
    assert data["explain_prompt_version"] == "a1b2c3d4"
    assert sorted((p["accession"], p["predicted"], p["actual"]) for p in data["predictions"]) == sorted(
        PREDICTIONS_3)
    assert data["examples"] is None


def test_show_failed_label_gives_the_reason(seeded, cli):
    result = cli("show", "demo", "12", "--workspace", seeded.root)
    assert result.exit_code == 0
    assert "Labeling failed: explainer returned no JSON" in result.stdout


def test_show_payload_is_printed_as_text(seeded, cli):
    result = cli("show", "demo", "20", "--workspace", seeded.root)
    assert result.exit_code == 0
    assert PAYLOAD_LABEL in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope", "3"], "error: no SAE named 'nope'; known: demo, other."),
        (["demo", "64"], "error: SAE 'demo' has features 0..63; there is no feature 64."),
        (["demo", "5"],
         "error: feature 5 of SAE 'demo' has no label yet; run `plmlabel label demo --features 5`."),
        (["demo", "x"], "Invalid value for 'FEATURE'"),
        (["demo", "3 or 1=1"], "Invalid value for 'FEATURE'"),
    ],
)
def test_show_unknown_is_one_line_exit_2(seeded, cli, args, message):
    result = cli("show", *args, "--workspace", seeded.root)
    assert result.exit_code == 2
    assert message in result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr


def test_commands_have_help(cli):
    for command in ("query", "show"):
        result = cli(command, "--help")
        assert result.exit_code == 0
        assert "--workspace" in result.stdout


def test_show_prints_the_top_examples_from_the_index(seeded, cli, swissprot_dir, monkeypatch):
    from tests.test_export import feature_examples, sample_proteins

    proteins = sample_proteins(swissprot_dir)
    examples = feature_examples(proteins, "demo", 3)
    calls = []

    def from_index(workspace, db, sae_id, feature):
        calls.append((workspace.root, sae_id, feature))
        return examples

    monkeypatch.setattr("sae.index.load_feature_examples", from_index)
    result = cli("show", "demo", "3", "--workspace", seeded.root)
    assert result.exit_code == 0, result.stderr
    assert calls == [(seeded.root, "demo", 3)]
    out = result.stdout
    assert "Top examples (4 of 5)" in out  # the silent example is not shown
    top = examples.examples[0]
    assert top.protein.accession in out
    seq = top.protein.sequence
    # 10 residues either side of the peak (residue 11); without colour the firing 10-12 are bracketed
    assert f"1-21 {seq[:9]}[{seq[9]}][{seq[10]}][{seq[11]}]{seq[12:21]}" in out
    data = cli("show", "demo", "3", "--workspace", seeded.root, "--json").json()
    assert data["examples"][0] == {
        "accession": top.protein.accession, "name": top.protein.protein_name, "organism": "Homo sapiens",
        "kind": "top", "max_activation": 2.5, "normalized": 1.0,
        "firing": [[10, 1.5], [11, 2.5], [12, 0.75]],
    }
