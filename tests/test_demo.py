"""The one-command demo, end to end on the bundled sample, with a tiny ESM-2 so it runs in seconds."""

from __future__ import annotations

import gzip
import json

import pytest

from agent.demo import DemoSettings, run_demo, sample_path
from storage.workspace import Workspace
from tests.esm_fixtures import tiny_checkpoint


class _Recorder:
    def __init__(self) -> None:
        self.stages: list[str] = []
        self.warnings: list[str] = []

    def stage(self, name: str, detail: str = "") -> None:
        self.stages.append(name)

    def progress(self, done: int, total: int | None, text: str = "") -> None:
        pass

    def warn(self, message: str) -> None:
        self.warnings.append(message)


def test_bundled_sample_is_real_swissprot_with_its_notice():
    path = sample_path()
    with gzip.open(path, "rt") as handle:
        text = handle.read()
    assert text.count("\n//\n") == 300
    assert (path.parent / "NOTICE.md").read_text().count("CC BY 4.0") == 1


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    plm = tiny_checkpoint(root)
    ws = Workspace(root / "ws")
    recorder = _Recorder()
    settings = DemoSettings(plm=str(plm), layer=2, d_sae=128, k=8, epochs=1.0, n_label=12, backend="baseline")
    return ws, recorder, run_demo(ws, recorder, settings), settings


def test_demo_runs_every_stage_and_writes_the_viewer(demo_run):
    ws, recorder, summary, _ = demo_run
    assert recorder.stages == ["import", "embed", "train", "index", "concepts", "label", "viewer"]
    assert summary.n_proteins == 300
    assert summary.n_residues == 107_018
    assert summary.backend == "baseline"
    assert summary.n_labeled == 12
    assert 0 <= summary.n_validated <= summary.n_labeled
    assert len(summary.best) == 10
    viewer = ws.root / "viewer" / "index.html"
    assert str(viewer) == summary.viewer and viewer.exists()
    html = viewer.read_text()
    assert all(row.label.split()[0] in html for row in summary.best if row.label)


def test_demo_rerun_reuses_the_workspace_and_labels_nothing_twice(demo_run):
    ws, _, first, settings = demo_run
    with ws.db() as db:
        before = db.query("select feature, label, created_at from labels order by feature")
    again = run_demo(ws, _Recorder(), settings)
    assert again.n_labeled == first.n_labeled
    with ws.db() as db:
        after = db.query("select feature, label, created_at from labels order by feature")
        runs = db.query("select n_labeled, n_skipped from runs order by started_at")
    assert after == before
    assert runs[-1]["n_labeled"] == 0


def test_demo_cli_json(tmp_path, cli):
    plm = tiny_checkpoint(tmp_path)
    result = cli("demo", "--workspace", tmp_path / "ws", "--plm", plm, "--layer", "1", "--features", "4",
                 "--backend", "baseline", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["n_labeled"] == 4 and summary["plm_random"] is False
    assert (tmp_path / "ws" / "viewer" / "index.html").exists()


def test_the_demo_workspace_names_the_model_it_used_and_is_git_ignored(demo_run):
    """The README's tour run inside the demo workspace reads the ESM-2 the embeddings came from."""
    from pathlib import Path

    ws, _recorder, summary, settings = demo_run
    plm = ws.load_config().plm
    assert (plm.model, plm.layer) == (settings.plm, settings.layer) == (summary.plm_model, summary.layer)
    ignored = (Path(__file__).resolve().parents[1] / ".gitignore").read_text().splitlines()
    assert "/plmlabel-demo/" in ignored


def test_a_fallback_to_the_random_esm_is_named_in_the_toml(tmp_path):
    from agent.demo import DEMO_LAYER, _name_the_model_used

    ws = Workspace(tmp_path / "ws")
    ws.init()
    random_plm = str(ws.root / "models" / "esm2_random_t6_320.pt")
    config = _name_the_model_used(ws, ws.load_config(), random_plm, DEMO_LAYER)
    assert ws.load_config() == config and config.plm.model == random_plm and config.plm.layer == DEMO_LAYER
    assert config.label == ws.load_config().label  # the other settings kept
