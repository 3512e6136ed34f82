"""`plmlabel concepts` end to end: embeddings -> planted SAE -> index -> F1 protocol -> database."""

from __future__ import annotations

import shutil

import pytest

from sae.index import load_feature_examples
from storage.features_store import get_feature_concepts, get_top_concepts
from storage.workspace import Workspace
from tests.index_fixtures import (
    CYS_FEATURE,
    D_SAE,
    SAE_ID,
    TM_FEATURE,
    ZF_FEATURE,
    copy_template,
    shared_swissprot,
)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> tuple[Workspace, dict]:
    from tests.conftest import invoke

    ws = copy_template(shared_swissprot(), tmp_path_factory.mktemp("concepts") / "ws")
    result = invoke("concepts", SAE_ID, "--workspace", ws.root, "--min-proteins", "5", "--json")
    assert result.exit_code == 0, result.stderr
    return ws, result.json()


def test_planted_features_are_the_best_for_their_concepts(evaluated) -> None:
    _, report = evaluated
    by_concept = {row["concept"]: row for row in report["concepts"]}
    assert by_concept["Transmembrane"]["feature"] == TM_FEATURE
    assert by_concept["Transmembrane"]["f1_test"] > 0.9
    assert by_concept["Zinc finger"]["feature"] == ZF_FEATURE
    assert by_concept["Zinc finger"]["f1_test"] > 0.9
    cysteine = next(row for row in report["amino_acids"] if row["concept"] == "Amino acid: C")
    assert cysteine["feature"] == CYS_FEATURE and cysteine["f1_test"] > 0.9
    assert not any(row["kind"] == "amino_acid" for row in report["concepts"])
    assert report["n_concepts_f1_above"] >= 2 and report["n_features_f1_above"] >= 2
    assert report["n_proteins_valid"] + report["n_proteins_test"] > 100


def test_top_concepts_are_stored(evaluated) -> None:
    ws, report = evaluated
    with ws.db() as db:
        top = get_top_concepts(db, SAE_ID, TM_FEATURE)
        rows = get_feature_concepts(db, SAE_ID)
        examples = load_feature_examples(ws, db, SAE_ID, ZF_FEATURE)
    assert top[0]["concept"] == "Transmembrane" and top[0]["f1_test"] > 0.9
    assert len(rows) == report["stored"] > 0
    assert {r.feature for r in rows} <= set(range(D_SAE))
    assert examples.top_concepts[0]["concept"] == "Zinc finger"


def test_text_output_and_feature_show_lists_concepts(cli, evaluated, tmp_path) -> None:
    ws = Workspace(shutil.copytree(evaluated[0].root, tmp_path / "ws"))
    result = cli("concepts", SAE_ID, "--workspace", ws.root, "--min-proteins", "5", "--limit", "3")
    assert result.exit_code == 0, result.stderr
    assert "Transmembrane" in result.stdout and "Amino acids" in result.stdout
    assert "features have test F1 > 0.5" in result.stdout
    shown = cli("feature", "show", SAE_ID, str(TM_FEATURE), "--workspace", ws.root)
    assert "Swiss-Prot concepts" in shown.stdout and "Transmembrane" in shown.stdout


def test_concepts_need_an_index(cli, tmp_path) -> None:
    ws = copy_template(shared_swissprot(), tmp_path / "ws", indexed=False)
    result = cli("concepts", SAE_ID, "--workspace", ws.root)
    assert result.exit_code == 2
    assert "plmlabel index" in result.stderr and "Traceback" not in result.stderr
