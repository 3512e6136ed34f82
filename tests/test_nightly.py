"""`plmlabel label SAE_ID --nightly`: what it selects, the lock, the run row and summary line, exit codes."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time

import pytest

import prompts
import sae.index
from agent.labeling.selection import select_nightly
from agent.labeling.summary import EXIT_BUDGET, EXIT_FAILED, EXIT_OK, exit_code
from storage.features_store import FeatureStats, write_feature_stats
from storage.labels import (
    RunRecord,
    get_label,
    get_run,
    list_labels,
    list_runs,
    save_failure,
    save_label,
    start_run,
)
from storage.lock import workspace_lock
from tests.fake_llm import FakeLLM
from tests.planted import planted_set, register_sae

N = 20  # planted features
VERSIONS = {"explain": prompts.load("explain").version, "simulate": prompts.load("simulate").version}


@pytest.fixture
def ws(workspace, swissprot_dir, monkeypatch):
    """A workspace with the planted SAE registered; the index loader serves the planted examples."""
    examples = {fe.feature: fe for _, fe in planted_set(swissprot_dir)}
    with workspace.db() as db:
        register_sae(db, "planted", list(examples.values()))
    monkeypatch.setattr(sae.index, "load_feature_examples", lambda _ws, _db, _sae, f: examples[f])
    workspace.config_path.write_text("[label]\nretry_wait_s = 0.001\nmax_retries = 2\n")
    for key in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    return workspace


@pytest.fixture
def openai_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")


def nightly(cli, ws, *args):
    return cli("label", "planted", "--nightly", *args, "-w", ws.root)


def rows(ws, sql, params=()):
    with ws.db() as db:
        return db.query(sql, params)


def snapshot(ws) -> list[str]:
    with ws.db() as db:
        return list(db.db.conn.iterdump())


# --- the check the issue names -------------------------------------------------------------------------
def test_two_nightly_runs_in_a_row_the_second_labels_nothing_and_spends_nothing(cli, ws, openai_key):
    with FakeLLM() as fake:
        first = nightly(cli, ws, "--backend", "openai", "--base-url", fake.openai_url)
        sent = fake.count()
        second = nightly(cli, ws, "--backend", "openai", "--base-url", fake.openai_url, "--json")
        assert fake.count() == sent == 2 * N  # the second run sent nothing at all
    assert first.exit_code == 0, first.stderr
    line = first.stdout.strip()
    assert "\n" not in line and line.startswith(f"nightly planted: {N} labeled (")
    assert ", 0 failed, 0 left, $" in line and ", run " in line
    assert second.exit_code == 0, second.stderr
    summary = second.json()
    assert summary["n_labeled"] == 0 and summary["n_requested"] == 0 and summary["cost_usd"] == 0
    assert summary["n_skipped"] == N and summary["exit_code"] == 0
    assert summary["line"].startswith("nightly planted: 0 labeled (0 validated), 0 failed, 0 left, $0.0000")
    runs = list_runs_of(ws)
    assert [r.kind for r in runs] == ["nightly", "nightly"]
    assert runs[0].n_labeled == N and runs[0].cost_usd > 0 and runs[0].args["nightly"] is True
    assert (runs[1].n_labeled, runs[1].cost_usd, runs[1].status) == (0, 0, "completed")
    assert runs[1].run_id == summary["run_id"] and runs[0].run_id in line


def list_runs_of(ws):
    with ws.db() as db:
        return list_runs(db, "planted")


# --- selection -----------------------------------------------------------------------------------------
def _stored(db, feature, **changes):
    from storage.labels import LabelRecord

    values = {"sae_id": "planted", "feature": feature, "label": "Zinc finger", "description": "x",
              "backend": "openai", "explainer_model": "gpt-4.1", "simulator_model": "gpt-4.1",
              "explain_prompt_version": VERSIONS["explain"], "simulate_prompt_version": VERSIONS["simulate"],
              **changes}
    if values.get("status") == "failed":
        save_failure(db, LabelRecord(**values))
    else:
        save_label(db, LabelRecord(**values), [])


def test_relabel_stale_picks_up_other_models_and_prompt_versions_and_nothing_else(cli, ws, openai_key):
    with ws.db() as db:
        for feature in range(N):
            if feature != 13:
                _stored(db, feature)  # current: model gpt-4.1 with today's prompts
        _stored(db, 3, explain_prompt_version="0ldversion00")
        _stored(db, 5, simulate_prompt_version="0ldversion00")
        _stored(db, 7, explainer_model="gpt-4o", simulator_model="gpt-4o")
        _stored(db, 8, simulator_model="gpt-4o-mini")
        _stored(db, 11, backend="baseline", explainer_model="baseline", simulator_model="baseline",
                explain_prompt_version=None, simulate_prompt_version=None)
        _stored(db, 13, status="failed", error="HTTP 500", label=None)
        selection = select_nightly(db, "planted", model="gpt-4.1", prompt_versions=VERSIONS,
                                   relabel_stale=True)
        assert (selection.new, selection.retry, selection.stale) == ([], [13], [3, 5, 7, 8, 11])
        plain = select_nightly(db, "planted", model="gpt-4.1", prompt_versions=VERSIONS)
        assert plain.features == [13] and plain.up_to_date == N - 1
        # a run with another model finds every ok label stale
        other = select_nightly(db, "planted", model="gpt-4o", prompt_versions=VERSIONS, relabel_stale=True)
        assert other.stale == [f for f in range(N) if f not in (7, 13)]
    with FakeLLM() as fake:
        without = nightly(cli, ws, "--backend", "openai", "--base-url", fake.openai_url)
        assert set(fake.features_requested()) == {13}
        stale = nightly(cli, ws, "--relabel-stale", "--backend", "openai", "--base-url", fake.openai_url,
                        "--json")
        assert set(fake.features_requested()) == {3, 5, 7, 8, 11, 13}
    assert without.exit_code == 0 and stale.exit_code == 0, stale.stderr
    summary = stale.json()
    assert (summary["nightly"]["n_stale"], summary["nightly"]["n_retry"], summary["nightly"]["n_new"],
            summary["n_labeled"]) == (5, 0, 0, 5)
    with ws.db() as db:
        relabeled = get_label(db, "planted", 11)
        assert relabeled.explainer_model == "gpt-4.1"
        assert relabeled.explain_prompt_version == VERSIONS["explain"]
        assert select_nightly(db, "planted", model="gpt-4.1", prompt_versions=VERSIONS,
                              relabel_stale=True).features == []


def test_dead_features_are_never_selected(ws):
    with ws.db() as db:
        stats = [FeatureStats(sae_id="planted", feature=f, max_activation=0.0 if f == 4 else 1.0,
                              frac_residues=0.0, frac_proteins=0.1) for f in range(N)]
        write_feature_stats(db, stats)
        selection = select_nightly(db, "planted", model="baseline", prompt_versions={})
    assert 4 not in selection.features and selection.dead == 1 and len(selection.new) == N - 1


def test_a_failed_feature_is_retried_the_next_night(cli, ws, openai_key):
    with FakeLLM(script=["500"] * 3) as fake:  # three attempts in all: the first feature fails
        first = nightly(cli, ws, "--backend", "openai", "--base-url", fake.openai_url, "--concurrency", "1")
    assert first.exit_code == EXIT_FAILED
    assert "1 failed" in first.stdout and "feature 0 failed: " in first.stderr and "HTTP 500" in first.stderr
    with ws.db() as db:
        assert get_label(db, "planted", 0).status == "failed"
    with FakeLLM() as fake:
        second = nightly(cli, ws, "--backend", "openai", "--base-url", fake.openai_url)
        assert set(fake.features_requested()) == {0}  # only the failed feature is sent again
    assert second.exit_code == 0 and second.stdout.startswith("nightly planted: 1 labeled")
    with ws.db() as db:
        stored = list_labels(db, "planted")
    assert len(stored) == N and all(x.status == "ok" for x in stored)


# --- the lock ------------------------------------------------------------------------------------------
def _hold(path, ready, release):
    with workspace_lock(path, "nightly label planted"):
        ready.set()
        release.wait(20)


@pytest.mark.parametrize("args", [["--nightly"], ["--all"]])
def test_a_second_job_is_refused_while_one_holds_the_lock_and_nothing_changes(cli, ws, args):
    with ws.db() as db:  # a stale 'running' row: a refused job must not touch it either
        start_run(db, RunRecord(run_id="killed-run", sae_id="planted"))
    before = snapshot(ws)
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(ws.lock_path, ready, release))
    holder.start()
    try:
        assert ready.wait(10)
        result = cli("label", "planted", *args, "--backend", "baseline", "-w", ws.root)
    finally:
        release.set()
        holder.join(10)
    assert result.exit_code == 4
    assert result.stderr.count("\n") == 1 and "another plmlabel job holds the workspace lock" in result.stderr
    assert f"pid {holder.pid}" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""
    assert snapshot(ws) == before


def test_a_run_left_running_by_a_killed_job_is_marked_interrupted(cli, ws):
    with ws.db() as db:
        start_run(db, RunRecord(run_id="killed-run", sae_id="planted", kind="nightly"))
    result = nightly(cli, ws, "--backend", "baseline")
    assert result.exit_code == 0, result.stderr
    assert "marked interrupted: killed-run" in result.stderr
    with ws.db() as db:
        killed = get_run(db, "killed-run")
        assert killed.status == "interrupted" and killed.finished_at
        assert "killed?" in killed.message and "marked interrupted" in killed.message
        assert [r.status for r in list_runs(db)] == ["interrupted", "completed"]


# --- budget and exit codes -----------------------------------------------------------------------------
def test_budget_exhaustion_exits_3_and_says_so_and_the_next_run_continues(cli, ws, openai_key):
    with FakeLLM() as fake:
        result = nightly(cli, ws, "--backend", "openai", "--base-url", fake.openai_url, "--concurrency", "1",
                         "--budget-usd", "0.05")
        started = set(fake.features_requested())
    assert result.exit_code == EXIT_BUDGET, result.stderr
    assert "[budget exhausted]" in result.stdout and "budget of $0.05 reached" in result.stderr
    labeled = int(result.stdout.split(": ")[1].split(" labeled")[0])
    assert 0 < labeled < N and f"{N - labeled} left" in result.stdout and len(started) == labeled
    with ws.db() as db:
        run = list_runs(db)[0]
        assert run.status == "budget_exhausted" and run.cost_usd <= 0.05
    with FakeLLM() as fake:
        rest = nightly(cli, ws, "--backend", "openai", "--base-url", fake.openai_url)
        assert not set(fake.features_requested()) & started
    assert rest.exit_code == EXIT_OK and rest.stdout.startswith(f"nightly planted: {N - labeled} labeled")


def test_plain_label_exits_3_on_an_exhausted_budget_too(cli, ws, openai_key):
    with FakeLLM() as fake:
        result = cli("label", "planted", "--all", "--backend", "openai", "--base-url", fake.openai_url,
                     "--concurrency", "1", "--budget-usd", "0.03", "-w", ws.root)
    assert result.exit_code == EXIT_BUDGET
    assert "budget of $0.03 reached" in result.stderr and "budget_exhausted" in result.stdout


def test_a_provider_that_keeps_failing_exits_1(cli, ws, openai_key):
    with FakeLLM(error_rate=1.0, errors=("500",)) as fake:
        result = nightly(cli, ws, "--backend", "openai", "--base-url", fake.openai_url, "--concurrency", "1",
                         "--json")
    assert result.exit_code == EXIT_FAILED
    summary = result.json()
    assert summary["status"] == "failed" and summary["exit_code"] == 1
    assert "failures in a row" in summary["message"]
    assert summary["line"].endswith("[failed]")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nightly", "--all"], "--nightly chooses the features itself; drop --all"),
        (["--nightly", "--dry-run"], "--dry-run cannot be combined with --nightly"),
        (["--all", "--relabel-stale"], "--relabel-stale goes with --nightly"),
        (["--nightly", "--wait"], "--wait and --poll-interval go with --batch"),
        (["--all", "--batch", "--dry-run"], "--dry-run and --batch cannot be combined"),
        (["--nightly", "--backend", "openai"], "OPENAI_API_KEY"),
        (["--nightly", "--batch", "--backend", "baseline"], "--batch needs an LLM backend"),
    ],
)
def test_usage_errors_exit_2_and_change_nothing(cli, ws, args, message):
    before = snapshot(ws)
    result = cli("label", "planted", *args, "-w", ws.root)
    assert result.exit_code == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert snapshot(ws) == before


def test_unknown_sae_exits_2(cli, ws):
    result = cli("label", "nope", "--nightly", "--backend", "baseline", "-w", ws.root)
    assert result.exit_code == 2 and "no SAE named 'nope'" in result.stderr


def test_sigterm_exits_130_and_the_run_is_interrupted(cli, ws, openai_key):
    def labels_done() -> int:
        with ws.db() as db:
            return len(list_labels(db, "planted"))

    def terminate_after_two_labels() -> None:
        deadline = time.monotonic() + 30
        while labels_done() < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    with FakeLLM(latency=0.05) as fake:
        killer = threading.Thread(target=terminate_after_two_labels)
        killer.start()
        result = nightly(cli, ws, "--backend", "openai", "--base-url", fake.openai_url, "--concurrency", "2")
        killer.join()
    assert result.exit_code == 130 and "Traceback" not in result.stderr
    with ws.db() as db:
        run = list_runs(db)[0]
    assert run.kind == "nightly" and run.status == "interrupted" and run.n_labeled >= 2


def test_exit_code_mapping():
    from agent.labeling.summary import JobSummary

    def summary(**kw):
        return JobSummary(run_id="r", sae_id="s", backend="b", model="m", n_requested=5,
                          **{"status": "completed", **kw})

    assert exit_code(summary()) == 0
    assert exit_code(summary(n_failed=1)) == 1
    assert exit_code(summary(status="failed")) == 1
    assert exit_code(summary(status="budget_exhausted", n_not_started=2)) == 3
    assert exit_code(summary(status="budget_exhausted", n_not_started=2, n_failed=1)) == 1
    assert exit_code(summary(status="interrupted")) == 130


def test_help_documents_the_flags_and_exit_codes(cli):
    result = cli("label", "--help")
    assert result.exit_code == 0
    for option in ("--nightly", "--relabel-stale", "--batch", "--wait", "--poll-interval", "--budget-usd"):
        assert option in result.stdout
    for code in ("0 ", "1 ", "2 ", "3 ", "4 ", "130"):
        assert f"\n    {code}" in result.stdout
    assert "workspace lock" in result.stdout
