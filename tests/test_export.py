"""`plmlabel export`: each format's exact shape, escaping in the HTML viewer, and all-or-nothing output."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pandas as pd
import pytest

from agent.export_bundle import export_examples
from sae.index import ExampleProtein, FeatureExamples, ResidueActivation
from storage import export as export_module
from storage.errors import InputError
from storage.export import (
    MANIFEST_NAME,
    ExportBundle,
    iter_export_features,
    load_bundle,
    write_export,
)
from storage.export_interplm import interplm_row
from storage.protein import Protein
from storage.workspace import Workspace
from tests.test_query import LABELS, PAYLOAD_DESCRIPTION, PROVENANCE, seed_labels

# (accession offset in sprot_sample.json, kind, normalised max, firing residues as (position, value))
EXAMPLE_PLAN = [
    (0, "top", 1.0, ((10, 1.5), (11, 2.5), (12, 0.75))),
    (1, "top", 0.8, ((100, 2.0),)),
    (2, "quantile", 0.6, ((5, 1.5), (6, 0.5))),
    (3, "quantile", 0.2, ((1, 0.5),)),
    (4, "silent", 0.0, ()),
]


def sample_proteins(swissprot_dir: Path) -> list[Protein]:
    """Real Swiss-Prot entries from the shared REST JSON sample."""
    entries = json.loads((swissprot_dir / "sprot_sample.json").read_text())["results"]
    proteins = []
    for entry in entries:
        names = entry["proteinDescription"].get("recommendedName") or {}
        proteins.append(Protein(
            accession=entry["primaryAccession"], entry_name=entry["uniProtkbId"],
            protein_name=names.get("fullName", {}).get("value"),
            organism=entry["organism"]["scientificName"], length=entry["sequence"]["length"],
            sequence=entry["sequence"]["value"],
        ))
    return proteins


def feature_examples(proteins: list[Protein], sae_id: str, feature: int, max_act: float = 2.5,
                     ) -> FeatureExamples:
    """The examples an activation index would return for one feature."""
    examples = []
    for offset, kind, normalized, firing in EXAMPLE_PLAN:
        protein = proteins[(offset + feature) % len(proteins)]
        examples.append(ExampleProtein(
            protein=protein, kind=kind, max_activation=normalized * max_act, normalized=normalized,
            firing=tuple(ResidueActivation(position=p, value=v) for p, v in firing),
        ))
    return FeatureExamples(
        sae_id=sae_id, feature=feature, max_activation=max_act, frac_proteins=0.04,
        examples=tuple(examples), heldout=(), heldout_actuals=(), heldout_normalized=(),
    )


@pytest.fixture
def seeded(workspace: Workspace) -> Workspace:
    with workspace.db() as db:
        seed_labels(db)
    return workspace


@pytest.fixture
def exports(tmp_path: Path) -> Path:
    """A folder holding only what a test exports (the workspace lives beside it)."""
    folder = tmp_path / "exports"
    folder.mkdir()
    return folder


@pytest.fixture
def bundle(seeded: Workspace, swissprot_dir: Path) -> ExportBundle:
    """demo's labels with examples attached the way `plmlabel export` attaches them."""
    proteins = sample_proteins(swissprot_dir)
    with seeded.db() as db:
        data = load_bundle(db, "demo")
    for feature in data.features:
        feature.examples = export_examples(feature_examples(proteins, "demo", feature.record.feature))
    data.has_examples = True
    return data


# --- reading ---------------------------------------------------------------------------------------
def test_load_bundle_reads_ok_labels_with_statistics(seeded):
    with seeded.db() as db:
        data = load_bundle(db, "demo")
        validated = load_bundle(db, "demo", validated_only=True)
    assert [f.record.feature for f in data.features] == [3, 7, 11, 20]  # failed 12 left out
    assert [f.record.feature for f in validated.features] == [3, 7, 20]
    assert data.sae.plm_model == "esm2_t6_8M_UR50D" and data.sae.layer == 4
    first = data.features[0]
    assert (first.max_activation, first.frac_proteins) == (2.5, 0.04)
    assert first.top_concepts == [{"concept": "Zinc finger:C2H2-type", "f1_test": 0.71}]
    assert len(first.record.predictions) == 10


def test_export_examples_makes_dense_activations(swissprot_dir):
    proteins = sample_proteins(swissprot_dir)
    examples = export_examples(feature_examples(proteins, "demo", 0))
    first = examples[0]
    assert first.accession == proteins[0].accession
    assert first.name == "Putative uncharacterized protein C7orf78"
    assert len(first.activations) == len(first.sequence) == 256
    assert first.activations[9:12] == [1.5, 2.5, 0.75]
    assert sum(1 for value in first.activations if value) == 3


# --- interplm ----------------------------------------------------------------------------------------
def test_interplm_csv_is_exact(bundle, exports):
    write_export(bundle, "interplm", exports / "p")
    assert (exports / "p" / "LLM_Autointerp.csv").read_text() == (
        "Feature,Summary,Correlation\n"
        "3,Fires on the cysteines and histidines of C2H2 zinc finger domains that bind zinc ions.,0.82\n"
        "7,Hydrophobic membrane-spanning helices; a few transporters also bind zinc.,0.64\n"
        "11,[bold]Signal[/bold] peptides at the N-terminus of secreted proteins.,0.31\n"
        f"20,{_csv_field(PAYLOAD_DESCRIPTION)},0.55\n"
    )


def test_interplm_leaves_out_a_label_without_a_score(bundle):
    """A blank Correlation would show in the dashboard as "score=nan"."""
    feature = bundle.features[0]
    unscored = feature.model_copy(update={"record": feature.record.model_copy(update={"pearson": None})})
    assert interplm_row(unscored) is None
    assert interplm_row(feature) == [3, feature.record.description, 0.82]


def test_iter_export_features_streams_what_load_bundle_reads(seeded):
    with seeded.db() as db:
        loaded = load_bundle(db, "demo").features
        streamed = iter_export_features(db, "demo", batch_size=2)
        assert not isinstance(streamed, list)
        assert [f.model_dump() for f in streamed] == [f.model_dump() for f in loaded]
        assert [f.record.feature for f in iter_export_features(db, "demo", validated_only=True)] == [3, 7, 20]


def _csv_field(text: str) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow([text])
    return buffer.getvalue()


def test_interplm_csv_reads_as_the_dashboard_reads_it(seeded, cli, exports):
    result = cli("export", "demo", "--format", "interplm", "--out", exports / "out",
                 "--workspace", seeded.root)
    assert result.exit_code == 0, result.stderr
    assert "copy LLM_Autointerp.csv into <dashboard_cache>/<name>/layer_4/" in result.stdout
    df = pd.read_csv(exports / "out" / "LLM_Autointerp.csv")
    df = df.set_index("Feature")  # what InterPLM's dashboard does on load
    assert list(df.columns) == ["Summary", "Correlation"]
    assert f"{df.loc[3]['Correlation']:.2f}" == "0.82"
    assert list(df.query("Correlation > 0.5").index) == [3, 7, 20]
    assert df.loc[20]["Summary"] == PAYLOAD_DESCRIPTION


# --- interprot ---------------------------------------------------------------------------------------
def test_interprot_files_have_the_viewer_shape(bundle, exports):
    result = write_export(bundle, "interprot", exports / "viz")
    assert sorted(os.listdir(exports / "viz")) == sorted(
        ["3.json", "7.json", "11.json", "20.json", "SAEConfigs.plmlabel.ts", MANIFEST_NAME])
    assert result.files == ["3.json", "7.json", "11.json", "20.json", "SAEConfigs.plmlabel.ts"]
    data = json.loads((exports / "viz" / "3.json").read_text())
    assert set(data) == {"ranges", "freq_active", "n_seqs", "max_act", "top_pfam", "plmlabel"}
    assert list(data["ranges"]) == ["0-0.25", "0.25-0.5", "0.5-0.75", "0.75-1"]
    assert (data["freq_active"], data["max_act"], data["top_pfam"]) == (0.04, 2.5, [])
    counts = {name: len(r["examples"]) for name, r in data["ranges"].items()}
    assert counts == {"0-0.25": 1, "0.25-0.5": 0, "0.5-0.75": 1, "0.75-1": 2}  # the silent one is left out
    top = data["ranges"]["0.75-1"]["examples"][0]
    assert set(top) == {"sae_acts", "sequence", "alphafold_id", "uniprot_id", "name"}
    assert len(top["sae_acts"]) == len(top["sequence"])
    assert top["uniprot_id"] == top["alphafold_id"] == bundle.features[0].examples[0].accession
    assert max(top["sae_acts"]) == 2.5
    ours = data["plmlabel"]
    assert ours["sae_id"] == "demo" and ours["index"] == 3
    assert ours["label"] == "Zinc finger C2H2 cysteine"
    assert ours["scores"] == {"pearson": 0.82, "spearman": 0.79, "residue_pearson": None, "n_heldout": 10,
                              "validated": True}
    assert ours["provenance"] == PROVENANCE


@pytest.mark.parametrize("fmt", ["interprot", "neuronpedia"])
def test_viewer_formats_without_an_index_refuse_in_one_line(seeded, cli, exports, fmt):
    result = cli("export", "demo", "--format", fmt, "--out", exports / "viz", "--workspace", seeded.root)
    assert result.exit_code == 2
    assert result.stderr == (f"error: --format {fmt} needs the SAE's example activations: SAE 'demo' has no "
                             "activation index; run `plmlabel index demo` first.\n")
    assert os.listdir(exports) == []


# --- jsonl -------------------------------------------------------------------------------------------
def test_jsonl_lines_are_exact(seeded, cli, exports):
    result = cli("export", "demo", "--format", "jsonl", "--out", exports / "j", "--validated-only",
                 "--workspace", seeded.root, "--json")
    assert result.exit_code == 0
    assert result.json()["n_features"] == 3
    lines = (exports / "j" / "labels.jsonl").read_text().splitlines()
    assert len(lines) == 3
    assert json.loads(lines[0]) == {
        "plm_model": "esm2_t6_8M_UR50D", "layer": 4, "sae_id": "demo", "architecture": "topk", "d_sae": 64,
        "index": 3, "label": "Zinc finger C2H2 cysteine",
        "description": LABELS[0][4],
        "concepts": ["Zinc finger", "Metal binding"], "confidence": 0.7,
        "scores": {"pearson": 0.82, "spearman": 0.79, "residue_pearson": None, "n_heldout": 10,
                   "validated": True},
        "provenance": PROVENANCE, "max_activation": 2.5, "frac_proteins": 0.04,
        "top_concepts": [{"concept": "Zinc finger:C2H2-type", "f1_test": 0.71}],
    }
    assert [json.loads(line)["index"] for line in lines] == [3, 7, 20]


def test_no_run_arguments_or_keys_leave_the_database(seeded, cli, exports, monkeypatch):
    with seeded.db() as db:
        db.execute("update runs set args = ? where run_id = 'run-1'",
                   (json.dumps({"api_key": "sk-secret-123"}),))
        db.db.conn.commit()
    for fmt in ("interplm", "jsonl", "html"):  # interprot and neuronpedia: tests/test_export_viewers.py
        assert cli("export", "demo", "--format", fmt, "--out", exports / fmt,
                   "--workspace", seeded.root).exit_code == 0
        for path in (exports / fmt).rglob("*"):
            if path.is_file():
                assert "sk-secret-123" not in path.read_text()


# --- the folder appears whole or not at all -----------------------------------------------------------
def test_reexport_replaces_an_earlier_export_and_leaves_no_temp_folders(bundle, exports):
    out = exports / "out"
    write_export(bundle, "html", out)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["written"] == sorted(["index.html", *(f"features/{n}.html" for n in (3, 7, 11, 20))])
    write_export(bundle, "jsonl", out)
    assert sorted(os.listdir(out)) == ["labels.jsonl", MANIFEST_NAME]
    assert sorted(os.listdir(exports)) == ["out"]


@pytest.mark.parametrize("user_file", ["notes.txt", "features/stale.html", ".hidden", "extra/"])
def test_reexport_refuses_when_the_folder_holds_files_the_export_did_not_write(
        seeded, cli, bundle, exports, user_file):
    out = exports / "out"
    write_export(bundle, "html", out)
    if user_file.endswith("/"):
        (out / user_file).mkdir()
    else:
        (out / user_file).write_text("keep me")
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    result = cli("export", "demo", "--format", "jsonl", "--out", out, "--workspace", seeded.root)
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: {out} holds an earlier export and files it did not write ({user_file.rstrip('/')}); "
        "move them away or choose another folder.\n")
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before
    assert sorted(os.listdir(exports)) == ["out"]  # nothing staged left behind


def test_reexport_names_the_first_foreign_file_and_counts_the_rest(bundle, exports):
    out = exports / "out"
    write_export(bundle, "jsonl", out)
    for name in ("a.txt", "b.txt", "c.txt"):
        (out / name).write_text("mine")
    with pytest.raises(InputError, match=r"\(a\.txt and 2 more\)"):
        write_export(bundle, "jsonl", out)
    assert sorted(os.listdir(out)) == ["a.txt", "b.txt", "c.txt", "labels.jsonl", MANIFEST_NAME]


def test_an_export_from_before_file_lists_is_replaced_by_its_format_names(bundle, exports):
    out = exports / "out"
    write_export(bundle, "html", out)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    del manifest["written"]  # as plmlabel wrote it before manifests listed their files
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    write_export(bundle, "interplm", out)
    assert sorted(os.listdir(out)) == ["LLM_Autointerp.csv", MANIFEST_NAME]
    (out / "notes.md").write_text("mine")
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    del manifest["written"]
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="notes.md"):
        write_export(bundle, "jsonl", out)
    assert (out / "notes.md").read_text() == "mine"


def test_refuses_to_replace_a_folder_that_is_not_an_export(seeded, cli, exports):
    out = exports / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = cli("export", "demo", "--format", "jsonl", "--out", out, "--workspace", seeded.root)
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: {out} exists and is not a plmlabel export; choose a new or empty folder.\n")
    assert os.listdir(out) == ["notes.txt"]
    assert sorted(os.listdir(exports)) == ["mine"]


def test_a_path_under_a_regular_file_fails_cleanly(seeded, cli, exports):
    blocker = exports / "file.txt"
    blocker.write_text("x")
    result = cli("export", "demo", "--format", "html", "--out", blocker / "site", "--workspace", seeded.root)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: cannot write to {blocker / 'site'}: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert blocker.read_text() == "x"
    assert sorted(os.listdir(exports)) == ["file.txt"]


def test_out_is_a_file(seeded, cli, exports):
    target = exports / "file.txt"
    target.write_text("x")
    result = cli("export", "demo", "--format", "jsonl", "--out", target, "--workspace", seeded.root)
    assert result.exit_code == 2
    assert "it is a file, not a folder" in result.stderr
    assert target.read_text() == "x"


def test_a_read_only_folder_fails_cleanly(seeded, cli, exports):
    from tests.readonly import read_only  # works as root too (CI): chattr +i

    parent = exports / "ro"
    parent.mkdir()
    with read_only(parent):
        result = cli("export", "demo", "--format", "html", "--out", parent / "site",
                     "--workspace", seeded.root)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: cannot write to {parent / 'site'}: ")
    assert os.listdir(parent) == []


def test_a_failure_mid_export_leaves_nothing(bundle, exports, monkeypatch):
    def half_then_fail(sae, features, folder):
        (folder / "partial.txt").write_text("half")
        raise OSError(28, "No space left on device")

    monkeypatch.setitem(export_module.WRITERS, "jsonl", half_then_fail)
    with pytest.raises(InputError, match="No space left on device"):
        write_export(bundle, "jsonl", exports / "out")
    assert os.listdir(exports) == []


def test_a_failure_mid_reexport_keeps_the_earlier_export(bundle, exports, monkeypatch):
    write_export(bundle, "jsonl", exports / "out")
    before = (exports / "out" / "labels.jsonl").read_text()
    monkeypatch.setitem(export_module.WRITERS, "jsonl", lambda sae, features, folder: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        write_export(bundle, "jsonl", exports / "out")
    assert (exports / "out" / "labels.jsonl").read_text() == before
    assert os.listdir(exports) == ["out"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["nope", "--format", "jsonl"], 2, "error: no SAE named 'nope'; known: demo, other."),
        (["demo", "--format", "pdf"], 2, "Invalid value for '--format'"),
        (["demo"], 2, "Missing option '--format'"),
    ],
)
def test_export_bad_input(seeded, cli, exports, args, code, message):
    result = cli("export", *args, "--out", exports / "o", "--workspace", seeded.root)
    assert result.exit_code == code
    assert message in result.stderr
    assert not (exports / "o").exists()


def test_export_html_cli_says_where(seeded, cli, exports):
    result = cli("export", "demo", "--format", "html", "--out", exports / "site", "--workspace", seeded.root)
    assert result.exit_code == 0
    assert result.stdout == f"Exported 4 label(s) of demo as html to {exports / 'site' / 'index.html'}\n"
    assert "has no activation index" in result.stderr
    assert "No activation index was found" in (exports / "site" / "index.html").read_text()


def test_export_has_help(cli):
    result = cli("export", "--help")
    assert result.exit_code == 0
    assert "interplm" in result.stdout and "--validated-only" in result.stdout
