"""InterProt and Neuronpedia exports against the real index and the viewers' own checks.

InterProt: its viewer types and processData (tests/js/interprot, written from their source in their
layout) compiled with the real TypeScript compiler against our files, then run with node.
Neuronpedia: its upload-batch yup schema (tests/js/neuronpedia) run with the real yup package.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from sae.index import open_index
from storage.export import ExportExample, ExportFeature, ExportSae
from storage.export_interprot import RANGES, markdown_text, pick_ranges, range_name
from storage.export_neuronpedia import MAX_FEATURES, MAX_TOKENS
from storage.export_neuronpedia import write as write_neuronpedia
from storage.labels import StoredLabel
from tests.index_fixtures import SAE_ID, copy_template, shared_swissprot
from tests.test_query import PROVENANCE

JS = Path(__file__).parent / "js"
PAYLOAD = "Binds <img src=x onerror=alert(1)> [click](javascript:alert(1)) *zinc*"
LONG = "Helical transmembrane segment. " * 30  # > 512 characters
# feature, label, description, pearson, n_heldout, validated
LABELS = [
    (0, "Transmembrane helix", "Fires inside helical transmembrane regions.", 0.81, 24, 1),
    (1, "Zinc finger", PAYLOAD, 0.66, 24, 1),
    (2, "Cysteine", LONG, 0.42, 24, 0),
    (5, "Unscored", "A label the scorer could not score.", None, 3, 0),
]


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """The planted workspace (real proteins, a real index) with labels on four of its features."""
    ws = copy_template(shared_swissprot(), tmp_path_factory.mktemp("viewers") / "ws")
    with ws.db() as db:
        db.table("runs").insert({"run_id": PROVENANCE["run_id"], "sae_id": SAE_ID, "kind": "label",
                                 "status": "completed", "args": "{}"})
        for feature, label, description, pearson, n, validated in LABELS:
            db.table("labels").insert({
                "sae_id": SAE_ID, "feature": feature, "status": "ok", "label": label,
                "description": description, "concepts": "[]", "confidence": 0.7, "pearson": pearson,
                "spearman": pearson, "residue_pearson": None, "n_heldout": n, "validated": validated,
                **PROVENANCE,
            })
        db.db.conn.commit()
    return ws


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """typescript, markdown-to-jsx, react and yup from npm (tests/js/package.json, installed once)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed (apt-get install nodejs npm)")
    modules = JS / "node_modules"
    wanted = json.loads((JS / "package.json").read_text())["dependencies"]
    if not all((modules / name).is_dir() for name in wanted):
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=JS, check=True, timeout=300,
                       capture_output=True)
    return modules


def export(cli, ws, fmt: str, out: Path, *extra: str):
    result = cli("export", SAE_ID, "--format", fmt, "--out", out, "--workspace", ws.root, *extra)
    assert result.exit_code == 0, result.stderr
    return result


# --- InterProt ---------------------------------------------------------------------------------------
def test_pick_ranges_takes_the_top_of_each_range():
    values = np.array([1.0, 0.9, 0.2, 0.1, 0.6, 0.6, 0.3], dtype=np.float32)
    picks = pick_ranges(values, 1.0, per_range=2)
    assert [p.tolist() for p in picks] == [[2, 3], [6], [4, 5], [0, 1]]  # (0,.25] (.25,.5] (.5,.75] (.75,1]
    assert [p.tolist() for p in pick_ranges(values, 0.0)] == [[], [], [], []]


@pytest.mark.slow  # builds the planted index once per process (~15 s)
def test_interprot_ranges_come_from_every_indexed_protein(cli, indexed, tmp_path):
    export(cli, indexed, "interprot", tmp_path / "viz")
    reader = open_index(indexed, SAE_ID)
    for feature in (0, 1, 2, 5):
        data = json.loads((tmp_path / "viz" / f"{feature}.json").read_text())
        stats = reader.feature_stats(feature)
        assert data["freq_active"] == pytest.approx(stats.n_proteins / reader.n_proteins)
        assert data["n_seqs"] == stats.n_proteins and data["max_act"] == pytest.approx(stats.max_activation)
        proteins, values, peaks = reader.protein_maxima(feature)
        slots = {s.accession for s in reader.slots(feature)}
        for (start, end), name in zip(RANGES, data["ranges"], strict=True):
            assert name == range_name(start, end)
            normalized = values / values.max()
            in_range = [i for i in np.lexsort((proteins, -values)) if start < normalized[i] <= end][:12]
            examples = data["ranges"][name]["examples"]
            assert [e["uniprot_id"] for e in examples] == reader.accessions(proteins[in_range])
            for example, i in zip(examples, in_range, strict=True):
                assert len(example["sae_acts"]) == len(example["sequence"])
                assert max(example["sae_acts"]) == pytest.approx(float(values[i]), abs=1e-3)
                assert example.get("plmlabel_peak_only", False) == (example["uniprot_id"] not in slots)
                if example.get("plmlabel_peak_only"):
                    assert np.count_nonzero(example["sae_acts"]) == 1
                    assert example["sae_acts"][int(peaks[i])] == pytest.approx(float(values[i]), abs=1e-4)
    # the lower ranges are filled wherever the index has proteins there, not only from the examples
    lower = [len(json.loads((tmp_path / "viz" / f"{f}.json").read_text())["ranges"][n]["examples"])
             for f in (0, 1, 2, 5) for n in ("0-0.25", "0.25-0.5", "0.5-0.75")]
    assert sum(lower) > 0


def _tsc(node_modules: Path, project: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["node", str(node_modules / "typescript" / "bin" / "tsc"), "-p", str(project),
                           "--outDir", str(project / "out")], capture_output=True, text=True, timeout=120)


def _interprot_project(tmp_path: Path, viz: Path, features: list[int]) -> Path:
    """Their types in their layout, our files beside them, and a check that runs processData."""
    project = tmp_path / "interprot"
    shutil.copytree(JS / "interprot", project)
    src = project / "viz" / "src"
    shutil.copy(viz / "SAEConfigs.plmlabel.ts", src)
    (src / "data").mkdir()
    for feature in features:
        shutil.copy(viz / f"{feature}.json", src / "data")
    imports = "\n".join(f'import f{f} from "./data/{f}.json";' for f in features)
    files = ", ".join(f"[{f}, f{f}]" for f in features)
    (src / "check.ts").write_text(f'''import {{ SAE_CONFIGS }} from "./SAEConfigs";
import {{ PLMLABEL_SAE_CONFIG, PLMLABEL_SAE_NAME }} from "./SAEConfigs.plmlabel";
import {{ VizFile, descriptionOf, processData }} from "./SAEVisualizerPage";
{imports}

declare const console: {{ log(text: string): void }};
SAE_CONFIGS[PLMLABEL_SAE_NAME] = PLMLABEL_SAE_CONFIG;
const files: [number, VizFile][] = [{files}];
const config = SAE_CONFIGS[PLMLABEL_SAE_NAME];
console.log(JSON.stringify({{
  defaultDim: config.defaultDim, storagePath: config.storagePath, numHiddenDims: config.numHiddenDims,
  features: files.map(([dim, file]) => ({{ dim, desc: descriptionOf(config, dim), ...processData(file) }})),
}}));
''')
    return project


def _render_markdown(text: str) -> str:
    run = subprocess.run(["node", str(JS / "interprot" / "render_markdown.cjs"), text], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return run.stdout


@pytest.mark.slow  # builds the planted index once per process (~15 s)
def test_interprot_export_passes_their_types_and_process_data(cli, indexed, tmp_path, node_modules):
    export(cli, indexed, "interprot", tmp_path / "viz")
    project = _interprot_project(tmp_path, tmp_path / "viz", [0, 1, 2, 5])
    compiled = _tsc(node_modules, project)
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    run = subprocess.run(["node", str(project / "out" / "check.js")], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    shown = json.loads(run.stdout)
    assert shown["defaultDim"] == 0 and shown["storagePath"] == "plmlabel/planted"
    assert shown["numHiddenDims"] == 24
    by_dim = {f["dim"]: f for f in shown["features"]}
    assert by_dim[0]["desc"].startswith("Fires inside helical transmembrane regions.")
    assert "Pearson r 0.81 on 24 held-out proteins (validated)" in by_dim[0]["desc"]
    assert by_dim[1]["desc"].startswith(markdown_text(PAYLOAD))
    assert "<img" not in by_dim[1]["desc"] and "](javascript" not in by_dim[1]["desc"]
    shown_html = _render_markdown(by_dim[1]["desc"])  # as their <Markdown> component renders it
    assert shown_html == ("<div><p>Binds &lt;img src=x onerror=alert(1)&gt; [click](javascript:alert(1)) "
                          "*zinc*</p><p>plmlabel: Pearson r 0.66 on 24 held-out proteins (validated).</p>"
                          "</div>")
    assert "<img" not in shown_html and "<a" not in shown_html and "<em>" not in shown_html
    assert "<img" in _render_markdown(PAYLOAD)  # unescaped, the same text would make an element
    assert "Pearson" not in by_dim[5]["desc"]  # no score, no score line
    for feature in (0, 1, 2, 5):
        data = json.loads((tmp_path / "viz" / f"{feature}.json").read_text())
        range_data = by_dim[feature]["rangeData"]
        assert list(range_data) == ["0.75-1", "0.5-0.75", "0.25-0.5", "0-0.25"]
        for name, shown_examples in range_data.items():
            assert shown_examples == data["ranges"][name]["examples"][:9]
        assert by_dim[feature]["featureStats"] == {"freq_active": data["freq_active"], "top_pfam": []}
    assert any(by_dim[f]["rangeData"]["0.75-1"] for f in by_dim)


@pytest.mark.slow  # builds the planted index once per process (~15 s)
def test_interprot_type_check_fails_on_a_file_without_n_seqs(cli, indexed, tmp_path, node_modules):
    """The check can fail: a file missing a field VizFile requires does not compile."""
    export(cli, indexed, "interprot", tmp_path / "viz", "--validated-only")
    broken = tmp_path / "broken"
    shutil.copytree(tmp_path / "viz", broken)
    data = json.loads((broken / "0.json").read_text())
    del data["n_seqs"]
    (broken / "0.json").write_text(json.dumps(data))
    compiled = _tsc(node_modules, _interprot_project(tmp_path, broken, [0, 1]))
    assert compiled.returncode != 0
    assert "n_seqs" in compiled.stdout


# --- Neuronpedia -------------------------------------------------------------------------------------
def _validate(node_modules: Path, files: list[Path]) -> list[dict]:
    run = subprocess.run(["node", str(JS / "neuronpedia" / "validate.cjs"), *map(str, files)],
                         capture_output=True, text=True, timeout=60, env={"NODE_PATH": str(node_modules)})
    assert run.returncode == 0, run.stderr
    return [json.loads(line) for line in run.stdout.splitlines()]


@pytest.mark.slow  # builds the planted index once per process (~15 s)
def test_neuronpedia_batches_pass_their_upload_validation(cli, indexed, tmp_path, node_modules):
    export(cli, indexed, "neuronpedia", tmp_path / "np")
    export(cli, indexed, "jsonl", tmp_path / "jsonl")
    batch = tmp_path / "np" / "batch-0.json"
    line = tmp_path / "line.json"  # what the JSONL export holds is no upload body
    line.write_text((tmp_path / "jsonl" / "labels.jsonl").read_text().splitlines()[0])
    results = _validate(node_modules, [batch, line])
    assert results[0] == {"file": str(batch), "ok": True, "errors": []}
    assert results[1]["ok"] is False
    body = json.loads(batch.read_text())
    assert body["modelId"] == "esm2_t6_8m_ur50d" and body["source"] == "4-plmlabel-planted"
    by_index = {f["index"]: f for f in body["features"]}
    assert by_index[0]["explanations"] == [{"text": LABELS[0][2], "scoreV1": 0.81}]
    assert "scoreV1" not in by_index[5]["explanations"][0]  # never scored: no number made up
    assert len(by_index[2]["explanations"][0]["text"]) == 512
    assert by_index[0]["plmlabel"]["scores"]["validated"] is True
    reader = open_index(indexed, SAE_ID)
    assert len(by_index[0]["activations"]) == len([s for s in reader.examples(0) if s.max_activation > 0
                                                   and s.kind != "silent"])
    assert by_index[0]["density"] == pytest.approx(reader.feature_stats(0).frac_proteins)


def test_neuronpedia_rejects_our_jsonl_and_a_broken_body(tmp_path, node_modules):
    """The validator is real: today's JSONL lines are not upload bodies, nor is a body missing fields."""
    body = {"modelId": "m", "source": "1-x", "features": [{"index": 1, "activations": []}]}
    (tmp_path / "bad.json").write_text(json.dumps(body))
    (tmp_path / "line.json").write_text(json.dumps({"index": 3, "label": "x"}))
    results = _validate(node_modules, [tmp_path / "bad.json", tmp_path / "line.json"])
    assert [r["ok"] for r in results] == [False, False]
    assert any("activations" in e for e in results[0]["errors"])


def _feature(index: int, length: int) -> ExportFeature:
    record = StoredLabel.model_validate({
        "id": index + 1, "sae_id": "s", "feature": index, "status": "ok", "label": f"f{index}",
        "description": "d",
        "pearson": 0.6, "n_heldout": 12, "validated": True, "concepts": [], **PROVENANCE})
    activations = [0.0] * length
    activations[length - 3] = 2.0
    example = ExportExample(accession=f"P{index:05d}", sequence="A" * length, max_activation=2.0,
                            normalized=1.0, activations=activations)
    return ExportFeature(record=record, frac_proteins=0.1, examples=[example])


def test_neuronpedia_splits_into_bodies_of_128_and_windows_long_proteins(tmp_path, node_modules):
    sae = ExportSae(sae_id="s", plm_model="esm2_t6_8M_UR50D", layer=3, d_sae=300)
    features = (_feature(i, 1500 if i == 0 else 40) for i in range(MAX_FEATURES + 5))
    files = write_neuronpedia(sae, features, tmp_path)
    assert files == ["batch-0.json", "batch-1.json"]
    bodies = [json.loads((tmp_path / name).read_text()) for name in files]
    assert [len(b["features"]) for b in bodies] == [MAX_FEATURES, 5]
    long = bodies[0]["features"][0]["activations"][0]
    assert len(long["tokens"]) == len(long["values"]) == MAX_TOKENS
    assert long["values"][-3] == 2.0  # the window ends at the protein's end and holds the peak
    assert all(r["ok"] for r in _validate(node_modules, [tmp_path / name for name in files]))


def test_neuronpedia_lists_features_without_a_firing_example_as_skipped(tmp_path):
    sae = ExportSae(sae_id="s", plm_model="esm2_t6_8M_UR50D", layer=3)
    silent = _feature(7, 20).model_copy(update={"examples": []})
    assert write_neuronpedia(sae, [_feature(1, 20), silent], tmp_path) == ["batch-0.json", "skipped.json"]
    assert json.loads((tmp_path / "skipped.json").read_text()) == {"no_firing_example": [7]}
    assert [f["index"] for f in json.loads((tmp_path / "batch-0.json").read_text())["features"]] == [1]


def test_markdown_text_shows_untrusted_text_literally():
    assert markdown_text("<b>x</b> & [a](b) *c* `d`") == (
        r"&lt;b&gt;x&lt;/b&gt; &amp; \[a\]\(b\) \*c\* \`d\`")


@pytest.mark.parametrize("fmt", ["interprot", "neuronpedia", "interplm", "jsonl"])
def test_every_streaming_writer_takes_a_one_shot_generator(tmp_path, fmt):
    """Writers read the features once, in order, and write as they go: a generator is enough."""
    from importlib import import_module

    sae = ExportSae(sae_id="s", plm_model="esm2_t6_8M_UR50D", layer=3, d_sae=300)
    pulled: list[int] = []

    def features():
        for i in range(300):
            pulled.append(i)
            if fmt == "interprot" and i:  # the previous feature is on disk before the next is read
                assert (tmp_path / f"{i - 1}.json").exists()
            if fmt == "neuronpedia":
                assert (tmp_path / "batch-0.json").exists() == (i >= MAX_FEATURES)
            yield _feature(i, 30)

    files = import_module(f"storage.export_{fmt}").write(sae, features(), tmp_path)
    assert pulled == list(range(300))
    assert {"interprot": 301, "neuronpedia": 3, "interplm": 1, "jsonl": 1}[fmt] == len(files)
    if fmt == "interprot":
        config = (tmp_path / "SAEConfigs.plmlabel.ts").read_text()
        assert config.count("dim: ") == 300 and "numHiddenDims: 300" in config
