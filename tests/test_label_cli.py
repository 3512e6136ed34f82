"""`plmlabel label`: exit codes, output, and the backend it says it used."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import sae.index
from storage.labels import list_labels
from tests.fake_llm import FakeLLM
from tests.planted import planted_set, register_sae


@pytest.fixture
def ws(workspace, swissprot_dir, monkeypatch):
    """A workspace with the planted SAE registered; the index loader serves the planted examples."""
    examples = {fe.feature: fe for _, fe in planted_set(swissprot_dir)}
    with workspace.db() as db:
        register_sae(db, "planted", list(examples.values()))
    monkeypatch.setattr(sae.index, "load_feature_examples", lambda _ws, _db, _sae, f: examples[f])
    workspace.config_path.write_text("[label]\nretry_wait_s = 0.001\nmax_retries = 2\n")
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    return workspace


def labels(ws):
    with ws.db() as db:
        return list_labels(db, "planted")


def test_help_lists_the_options(cli):
    result = cli("label", "--help")
    assert result.exit_code == 0
    for option in ("--features", "--all", "--unlabeled", "--top", "--backend", "--model", "--base-url",
                   "--concurrency", "--budget-usd", "--dry-run", "--json", "--relabel"):
        assert option in result.stdout


def test_baseline_is_the_default_without_keys_and_says_so(cli, ws):
    result = cli("label", "planted", "--features", "0-4", "-w", ws.root, "--json")
    assert result.exit_code == 0, result.stderr
    summary = result.json()
    assert summary["backend"] == "baseline" and summary["status"] == "completed" and summary["ok"]
    assert summary["n_labeled"] == 5 and summary["cost_usd"] == 0
    assert "backend: baseline" in result.stderr and "no ANTHROPIC_API_KEY or OPENAI_API_KEY" in result.stderr
    assert len(labels(ws)) == 5

    again = cli("label", "planted", "--features", "0-4", "-w", ws.root, "--json")
    assert again.exit_code == 0 and again.json()["n_skipped"] == 5 and again.json()["n_requested"] == 0


def test_anthropic_is_the_default_with_its_key(cli, ws, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with FakeLLM() as fake:
        result = cli("label", "planted", "--top", "3", "--base-url", fake.anthropic_url, "-w", ws.root)
        assert fake.count() == 6
    assert result.exit_code == 0, result.stderr
    assert "backend: anthropic, model claude-sonnet-5-5 (ANTHROPIC_API_KEY is set)" in result.stderr
    assert "labeled" in result.stdout and "cost" in result.stdout and "completed" in result.stdout
    assert len(labels(ws)) == 3


def test_failed_features_exit_1_with_a_summary(cli, ws, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with FakeLLM(error_rate=1.0, errors=("500",)) as fake:
        result = cli("label", "planted", "--all", "--backend", "openai", "--base-url", fake.openai_url,
                     "--concurrency", "1", "-w", ws.root, "--json")
    assert result.exit_code == 1
    summary = result.json()
    assert not summary["ok"] and summary["status"] == "failed" and summary["n_failed"] == 5
    assert "error:" in result.stderr and "features failed" in result.stderr
    assert "Traceback" not in result.stderr
    assert all(x.status == "failed" and "HTTP 500" in x.error for x in labels(ws))


def test_dry_run_prints_prompts_and_cost(cli, ws):
    result = cli("label", "planted", "--features", "2", "--backend", "openai", "--dry-run", "-w", ws.root)
    assert result.exit_code == 0, result.stderr
    assert "feature 2: explain" in result.stdout and "feature 2: simulate" in result.stdout
    assert "system:" in result.stdout and "<example " in result.stdout
    assert "estimated cost $" in result.stdout and "Nothing was sent." in result.stdout
    as_json = cli("label", "planted", "--features", "2", "--backend", "openai", "--dry-run", "-w", ws.root,
                  "--json")
    assert as_json.json()["model"] == "gpt-4.1" and as_json.json()["cost_usd"] > 0
    assert labels(ws) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["planted"], "say which features"),
        (["planted", "--features", "1,99"], "has no feature 99"),
        (["planted", "--features", "x-1"], "bad feature list"),
        (["nope", "--all"], "no SAE named 'nope'"),
        (["planted", "--all", "--backend", "anthropic"], "ANTHROPIC_API_KEY"),
        (["planted", "--all", "--backend", "baseline", "--model", "gpt-4.1"], "no model to choose"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(cli, ws, args, message):
    result = cli("label", *args, "-w", ws.root)
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert labels(ws) == []


KILLABLE = """
import json
import sys

import sae.index
from sae.index import FeatureExamples

with open(sys.argv[1]) as handle:
    examples = {fe.feature: fe for fe in map(FeatureExamples.model_validate, json.load(handle))}
sae.index.load_feature_examples = lambda _ws, _db, _sae, f: examples[f]
from agent.cli import main

main(sys.argv[2:])
"""


def _ok_labels(ws) -> dict[int, object]:
    with ws.db() as db:
        return {x.feature: x for x in list_labels(db, "planted") if x.status == "ok"}


def test_killing_the_command_mid_run_loses_nothing_and_rerun_skips_stored(cli, ws, swissprot_dir, monkeypatch,
                                                                          tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    repo = Path(__file__).resolve().parents[1]
    examples = tmp_path / "examples.json"
    examples.write_text(json.dumps([fe.model_dump(mode="json") for _, fe in planted_set(swissprot_dir)[:10]]))
    with FakeLLM(latency=0.1) as fake:
        proc = subprocess.Popen(
            [sys.executable, "-c", KILLABLE, str(examples), "label", "planted", "--features", "0-9",
             "--backend", "openai", "--base-url", fake.openai_url, "--concurrency", "2", "-w", str(ws.root)],
            cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)}, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while len(_ok_labels(ws)) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.kill()  # SIGKILL: no chance to clean up
        _, stderr = proc.communicate(timeout=30)
    before = _ok_labels(ws)
    assert 3 <= len(before) < 10, stderr.decode()
    with ws.db() as db:
        status = db.query("select status from runs")[0]["status"]
    assert status == "running"  # a hard kill cannot say so; nothing else is lost

    with FakeLLM() as fake:
        result = cli("label", "planted", "--features", "0-9", "--backend", "openai", "--base-url",
                     fake.openai_url, "-w", ws.root, "--json")
        sent_for = set(fake.features_requested())
    assert result.exit_code == 0, result.stderr
    assert result.json()["n_skipped"] == len(before)
    assert not sent_for & set(before)
    after = _ok_labels(ws)
    assert len(after) == 10 and all(after[f] == label_ for f, label_ in before.items())


def test_sigterm_interrupts_cleanly(cli, ws, monkeypatch):
    """SIGTERM (what `kill` and schedulers send) ends the job like Ctrl-C: exit 130, run interrupted."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")

    def terminate_after_three_labels() -> None:
        deadline = time.monotonic() + 30
        while len(_ok_labels(ws)) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    with FakeLLM(latency=0.05) as fake:
        killer = threading.Thread(target=terminate_after_three_labels)
        killer.start()
        result = cli("label", "planted", "--all", "--backend", "openai", "--base-url", fake.openai_url,
                     "--concurrency", "2", "-w", ws.root)
        killer.join()
    assert result.exit_code == 130 and "Traceback" not in result.stderr, result.stderr
    assert "labels stored by run" in result.stderr and "rerun the same command to continue" in result.stderr
    assert "aborted" not in result.stderr
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone again
    with ws.db() as db:
        run = db.query("select status, n_labeled, message from runs")[0]
    assert run["status"] == "interrupted" and run["n_labeled"] == len(_ok_labels(ws)) >= 3
    assert "rerun to continue" in run["message"]


def test_no_index_on_disk_is_one_clear_error_and_no_run(cli, workspace, swissprot_dir):
    """The real index loader: statistics in the database but no index/ folder."""
    with workspace.db() as db:
        register_sae(db, "planted", [fe for _, fe in planted_set(swissprot_dir)[:3]])
    result = cli("label", "planted", "--all", "--backend", "baseline", "-w", workspace.root)
    assert result.exit_code == 2 and "has no activation index" in result.stderr
    assert "Traceback" not in result.stderr
    with workspace.db() as db:
        assert db.query("select count(*) as n from runs")[0]["n"] == 0


def test_exclusive_selectors_say_so_and_name_those_given(cli, ws):
    result = cli("label", "planted", "--top", "5", "--all", "-w", ws.root)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "are exclusive" in result.stderr and "--all and --top were given" in result.stderr
    assert labels(ws) == []


def test_a_key_echoed_by_the_server_is_not_printed(cli, ws, monkeypatch):
    secret = "sk-ant-ECHOED-4711-do-not-print"
    monkeypatch.setenv("ANTHROPIC_API_KEY", secret)
    with FakeLLM(script=["401_echo"]) as fake:
        result = cli("label", "planted", "--features", "0-2", "--backend", "anthropic", "--base-url",
                     fake.anthropic_url, "-w", ws.root)
    assert result.exit_code == 1
    assert "[redacted]" in result.stderr + result.stdout
    assert secret not in result.stderr + result.stdout
    assert all(secret not in (x.error or "") for x in labels(ws))
