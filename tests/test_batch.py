"""`--batch`: the providers' batch APIs through the real anthropic and openai SDKs, against the fake server.

Submit -> poll -> collect across invocations, labels equal to the synchronous path's at half the
price, failures per request, recovery after a crash without submitting anything twice.
"""

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
from storage.labels import get_label, list_batches, list_labels, list_runs
from storage.workspace import Workspace
from tests.fake_llm import FakeLLM, Reply
from tests.planted import planted_set, register_sae

N = 20
PROVIDERS = ["anthropic", "openai"]
KEYS = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}


def _prepare(workspace: Workspace, examples, monkeypatch) -> Workspace:
    with workspace.db() as db:
        register_sae(db, "planted", list(examples.values()))
    monkeypatch.setattr(sae.index, "load_feature_examples", lambda _ws, _db, _sae, f: examples[f])
    workspace.config_path.write_text("[label]\nretry_wait_s = 0.001\nmax_retries = 2\n")
    return workspace


@pytest.fixture
def examples(swissprot_dir):
    return {fe.feature: fe for _, fe in planted_set(swissprot_dir)}


@pytest.fixture
def ws(workspace, examples, monkeypatch):
    """A workspace with the planted SAE registered; the index loader serves the planted examples."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-test")
    return _prepare(workspace, examples, monkeypatch)


@pytest.fixture
def fake():
    with FakeLLM() as server:
        yield server


def url(fake: FakeLLM, provider: str) -> str:
    return fake.anthropic_url if provider == "anthropic" else fake.openai_url


def batch(cli, ws, fake, provider, *args):
    return cli("label", "planted", *args, "--batch", "--backend", provider, "--base-url", url(fake, provider),
               "-w", ws.root)


def labels(ws):
    with ws.db() as db:
        return {x.feature: x for x in list_labels(db, "planted", with_predictions=True)}


def runs(ws):
    with ws.db() as db:
        return list_runs(db, "planted")


def batches(ws):
    with ws.db() as db:
        return list_batches(db, "planted")


# --- the happy path, step by step ----------------------------------------------------------------------
@pytest.mark.parametrize("provider", PROVIDERS)
def test_submit_then_collect_explain_then_collect_labels_equal_to_the_synchronous_path(
    cli, ws, fake, provider, tmp_path, examples, monkeypatch
):
    first = batch(cli, ws, fake, provider, "--all", "--json")
    assert first.exit_code == 0, first.stderr
    summary = first.json()
    assert (summary["batch"]["n_submitted"], summary["n_in_flight"], summary["cost_usd"]) == (N, N, 0)
    assert "submitted explain batch" in first.stderr
    assert fake.batch_count(provider, "explanation") == 1 and labels(ws) == {}
    [row] = batches(ws)
    assert (row.stage, row.status, row.provider, len(row.requests)) == ("explain", "submitted", provider, N)
    assert row.requests["explain-3"]["feature"] == 3
    assert row.requests["explain-3"]["prompt_versions"]["explain"]

    second = batch(cli, ws, fake, provider, "--all", "--json")  # collects explain, submits simulate
    assert second.exit_code == 0, second.stderr
    assert second.json()["batch"]["n_submitted"] == 0 and second.json()["n_in_flight"] == N
    assert fake.batch_count(provider, "explanation") == 1 and fake.batch_count(provider, "simulation") == 1
    assert labels(ws) == {}
    simulate_row = [b for b in batches(ws) if b.stage == "simulate"][0]
    assert simulate_row.requests["simulate-3"]["carried"]["explanation"]["label"]

    third = batch(cli, ws, fake, provider, "--all")  # collects simulate: labels
    assert third.exit_code == 0, third.stderr
    assert "collected simulate batch" in third.stderr and "labeled" in third.stdout
    stored = labels(ws)
    assert len(stored) == N and all(x.status == "ok" for x in stored.values())
    assert {b.status for b in batches(ws)} == {"collected"}
    # one explain and one simulate line per feature, nothing sent twice, no synchronous call
    assert fake.features_requested("explanation") == {f: 1 for f in range(N)}
    assert fake.features_requested("simulation") == {f: 1 for f in range(N)}
    batch_path = "/v1/messages/batches" if provider == "anthropic" else "/v1/batches"
    assert {r.path for r in fake.requests} == {batch_path}

    fourth = batch(cli, ws, fake, provider, "--all", "--json")  # nothing left: sends nothing
    assert fourth.exit_code == 0 and fourth.json()["n_requested"] == 0 and fourth.json()["n_skipped"] == N
    assert fake.batch_count() == 2

    # the same features through the synchronous path, in another workspace
    other = Workspace(tmp_path / "sync")
    other.init()
    _prepare(other, examples, monkeypatch)
    with FakeLLM() as sync_fake:
        sync = cli("label", "planted", "--all", "--backend", provider, "--base-url", url(sync_fake, provider),
                   "-w", other.root)
    assert sync.exit_code == 0, sync.stderr
    reference = labels(other)
    for feature, label in stored.items():
        same = reference[feature]
        for name in ("label", "description", "concepts", "pearson", "spearman", "validated", "n_heldout"):
            assert getattr(label, name) == getattr(same, name), (feature, name)
        assert label.predictions == same.predictions
        assert (label.explain_prompt_version, label.simulate_prompt_version) == (
            same.explain_prompt_version, same.simulate_prompt_version)
        assert label.explainer_model == same.explainer_model and label.backend == provider
    assert sum(x.validated for x in stored.values()) >= 0.8 * N
    batch_cost = sum(x.cost_usd for x in stored.values())
    assert batch_cost == pytest.approx(0.5 * sum(x.cost_usd for x in reference.values()), rel=0.1)
    # every collected cost lands in exactly one run; the submit-only run cost nothing
    assert [r.cost_usd for r in runs(ws)][0] == 0
    assert sum(r.cost_usd for r in runs(ws)) == pytest.approx(batch_cost)
    assert [r.n_labeled for r in runs(ws)] == [0, 0, N, 0] and {r.kind for r in runs(ws)} == {"batch"}


@pytest.mark.parametrize(("provider", "model"), [("anthropic", None), ("anthropic", "claude-3-5-haiku"),
                                               ("openai", None)])
def test_nightly_batch_wait_does_it_all_in_one_run(cli, ws, fake, provider, model):
    """claude-3-5-haiku: structured output by forced tool use, read back from the batch's messages."""
    fake.batch_end_after = 3  # each batch reports "in progress" twice first
    result = cli("label", "planted", "--nightly", "--batch", "--wait", "--poll-interval", "0.01", "--backend",
                 provider, "--base-url", url(fake, provider), *(["--model", model] if model else []),
                 "-w", ws.root)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"nightly planted (batch): {N} labeled (")
    assert ", submitted 20, in flight 0, $" in result.stdout
    assert len(labels(ws)) == N and fake.batch_count() == 2
    assert sum(x.validated for x in labels(ws).values()) >= 0.8 * N
    if model:
        assert all("tool_choice" in r.body for r in fake.requests)
    again = cli("label", "planted", "--nightly", "--batch", "--backend", provider, "--base-url",
                url(fake, provider), *(["--model", model] if model else []), "-w", ws.root, "--json")
    assert again.exit_code == 0 and again.json()["n_labeled"] == 0 and again.json()["cost_usd"] == 0
    assert fake.batch_count() == 2  # the second night submitted nothing


# --- failures per request ------------------------------------------------------------------------------
@pytest.mark.parametrize("provider", PROVIDERS)
def test_expired_requests_fail_with_a_reason_and_are_retried_next_night(cli, ws, fake, provider):
    fake.batch_script = ["expire"]
    args = ("--nightly", "--batch", "--wait", "--poll-interval", "0.01")
    first = batch(cli, ws, fake, provider, *args)
    assert first.exit_code == 1
    assert f"nightly planted (batch): 0 labeled (0 validated), {N} failed" in first.stdout
    assert "expired" in first.stderr
    assert all(x.status == "failed" and "expire" in x.error for x in labels(ws).values())
    second = batch(cli, ws, fake, provider, *args)
    assert second.exit_code == 0, second.stderr
    assert second.stdout.startswith(f"nightly planted (batch): {N} labeled")
    assert fake.batch_count(provider, "explanation") == 2


@pytest.mark.parametrize("provider", PROVIDERS)
def test_errored_lines_fail_alone(cli, ws, fake, provider):
    fake.script = ["500", "ok", "429"]  # the first and third explain lines error
    result = batch(cli, ws, fake, provider, "--features", "0-4", "--wait", "--poll-interval", "0.01",
                   "--json")
    assert result.exit_code == 1
    assert result.json()["n_labeled"] == 3 and result.json()["n_failed"] == 2
    stored = labels(ws)
    assert stored[0].status == stored[2].status == "failed" and "500" in stored[0].error
    assert all(stored[f].status == "ok" for f in (1, 3, 4))
    assert "error:" in result.stderr and "2 of 5 features failed" in result.stderr


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_malformed_batch_answer_gets_one_synchronous_repair(cli, ws, fake, provider):
    fake.script = ["bad_answer", "bad_answer", "ok", "bad_answer"]  # both lines bad; the repair of 1 too
    result = batch(cli, ws, fake, provider, "--features", "0-1", "--wait", "--poll-interval", "0.01")
    assert result.exit_code == 1
    stored = labels(ws)
    assert stored[0].status == "ok" and stored[0].label
    assert stored[1].status == "failed" and "after one repair attempt" in stored[1].error
    sync_path = "/v1/messages" if provider == "anthropic" else "/v1/chat/completions"
    repairs = [r for r in fake.requests if r.path == sync_path]
    assert [r.feature for r in repairs] == [0, 1] and all(r.n_messages >= 3 for r in repairs)
    assert stored[1].cost_usd > 0  # the malformed answers were billed


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_batch_the_provider_no_longer_knows_fails_its_features(cli, ws, fake, provider):
    assert batch(cli, ws, fake, provider, "--features", "0-2").exit_code == 0
    fake.batches.clear()
    result = batch(cli, ws, fake, provider, "--features", "0-2", "--json")
    assert result.exit_code == 1
    assert result.json()["n_failed"] == 3 and result.json()["batch"]["n_submitted"] == 0
    [row] = batches(ws)
    assert row.status == "failed" and "no longer knows" in row.message
    assert all("no longer knows" in x.error for x in labels(ws).values())


def test_a_provider_failing_while_polling_keeps_the_batch_for_the_next_run(cli, ws, fake):
    assert batch(cli, ws, fake, "openai", "--features", "0-2").exit_code == 0
    fake.route("GET", "/v1/batches/(?P<id>[^/]+)", _failing)  # every poll: HTTP 500
    result = batch(cli, ws, fake, "openai", "--features", "0-5", "--json")
    assert result.exit_code == 1
    summary = result.json()
    assert summary["status"] == "failed" and "kept failing" in summary["message"]
    assert summary["batch"]["n_submitted"] == 0 and summary["n_in_flight"] == 3
    assert [b.status for b in batches(ws)] == ["submitted"] and labels(ws) == {}
    fake.routes.pop(0)  # the provider recovers
    again = batch(cli, ws, fake, "openai", "--features", "0-5", "--wait", "--poll-interval", "0.01")
    assert again.exit_code == 0, again.stderr
    assert len(labels(ws)) == 6 and fake.batch_count("openai", "explanation") == 2


def _failing(fake, body, headers, match):
    return Reply(500, json.dumps({"error": {"message": "injected 500", "type": "server_error"}}).encode())


def test_a_synchronous_nightly_leaves_features_in_flight_to_the_batch_run(cli, ws, fake):
    assert batch(cli, ws, fake, "openai", "--features", "0-2").exit_code == 0
    result = cli("label", "planted", "--nightly", "--backend", "baseline", "-w", ws.root, "--json")
    assert result.exit_code == 0
    assert result.json()["n_labeled"] == N - 3 and result.json()["n_in_flight"] == 3
    assert "3 features are in provider batches still in flight" in result.stderr
    assert set(labels(ws)) == set(range(3, N))


def test_openai_validation_failure_fails_every_request(cli, ws, fake):
    fake.batch_script = ["fail"]
    result = batch(cli, ws, fake, "openai", "--features", "0-2", "--wait", "--poll-interval", "0.01")
    assert result.exit_code == 1
    assert all("injected validation failure" in x.error for x in labels(ws).values())


def test_answers_about_a_rebuilt_index_are_not_scored(cli, ws, fake, examples, monkeypatch):
    def index(version: str) -> None:
        built = {f: fe.model_copy(update={"index_hash": version}) for f, fe in examples.items()}
        monkeypatch.setattr(sae.index, "load_feature_examples", lambda _ws, _db, _sae, f: built[f])

    index("v1")
    assert batch(cli, ws, fake, "openai", "--features", "0-1").exit_code == 0
    index("v2")
    result = batch(cli, ws, fake, "openai", "--features", "0-1")
    assert result.exit_code == 1
    assert all("index was rebuilt" in x.error for x in labels(ws).values())


def test_batch_budget_exhaustion_exits_3(cli, ws, fake):
    result = batch(cli, ws, fake, "anthropic", "--nightly", "--budget-usd", "0.02", "--json")
    assert result.exit_code == 3, result.stderr
    summary = result.json()
    submitted = summary["batch"]["n_submitted"]
    assert 0 < submitted < N and summary["n_not_started"] == N - submitted
    assert "budget of $0.02 reached" in summary["message"] and summary["line"].endswith("[budget exhausted]")


# --- restarts ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("provider", PROVIDERS)
def test_recollecting_an_explain_batch_after_a_crash_submits_nothing_twice(cli, ws, fake, provider):
    """A crash after the simulate batch was recorded but before the explain batch was closed."""
    assert batch(cli, ws, fake, provider, "--features", "0-4").exit_code == 0
    assert batch(cli, ws, fake, provider, "--features", "0-4").exit_code == 0  # simulate submitted
    explain_id = [b.batch_id for b in batches(ws) if b.stage == "explain"][0]
    with ws.db() as db:
        db.execute("UPDATE batches SET status = 'submitted', collected_at = NULL WHERE batch_id = ?",
                   (explain_id,))
    result = batch(cli, ws, fake, provider, "--features", "0-4", "--wait", "--poll-interval", "0.01")
    assert result.exit_code == 0, result.stderr
    assert fake.batch_count(provider, "simulation") == 1 and fake.batch_count(provider, "explanation") == 1
    assert len(labels(ws)) == 5


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


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_run_killed_while_waiting_is_collected_by_the_next_run_without_resubmitting(
    cli, ws, fake, provider, examples, tmp_path
):
    repo = Path(__file__).resolve().parents[1]
    path = tmp_path / "examples.json"
    path.write_text(json.dumps([fe.model_dump(mode="json") for fe in examples.values()]))
    fake.hold_batches = True
    args = ["label", "planted", "--nightly", "--batch", "--wait", "--poll-interval", "0.02", "--backend",
            provider, "--base-url", url(fake, provider), "-w", str(ws.root)]
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, str(path), *args], cwd=repo,
                            env={**os.environ, "PYTHONPATH": str(repo)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not batches(ws) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)  # polling now
    proc.kill()  # SIGKILL: no chance to clean up
    _, stderr = proc.communicate(timeout=30)
    [row] = batches(ws)
    assert row.status == "submitted" and row.stage == "explain", stderr.decode()
    assert [r.status for r in runs(ws)] == ["running"]

    fake.hold_batches = False  # the provider finishes the batch while nobody is watching
    result = cli(*args[:-2], "-w", ws.root, "--poll-interval", "0.01")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"nightly planted (batch): {N} labeled")
    assert ", submitted 0, in flight 0," in result.stdout
    assert fake.batch_count(provider, "explanation") == 1  # not submitted again
    assert fake.features_requested("explanation") == {f: 1 for f in range(N)}
    assert len(labels(ws)) == N and all(x.status == "ok" for x in labels(ws).values())
    assert [r.status for r in runs(ws)] == ["interrupted", "completed"]
    with ws.db() as db:
        assert get_label(db, "planted", 0).run_id == runs(ws)[1].run_id


def test_sigterm_while_waiting_exits_130_and_leaves_the_batch_in_flight(cli, ws, fake):
    fake.hold_batches = True

    def terminate_once_submitted() -> None:
        deadline = time.monotonic() + 30
        while not batches(ws) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=terminate_once_submitted)
    killer.start()
    result = batch(cli, ws, fake, "openai", "--nightly", "--wait", "--poll-interval", "0.01")
    killer.join()
    assert result.exit_code == 130 and "Traceback" not in result.stderr
    assert [r.status for r in runs(ws)] == ["interrupted"]
    assert "collected by the next run" in runs(ws)[0].message
    assert [b.status for b in batches(ws)] == ["submitted"]


@pytest.mark.parametrize("stage", ["explain", "simulate"])
def test_batches_submitted_before_the_protocol_was_one_are_collected(cli, ws, fake, stage):
    """Rows written by the earlier batch job (their own per-stage fields) are read as the same lines."""
    assert batch(cli, ws, fake, "openai", "--features", "0-2").exit_code == 0
    if stage == "simulate":
        assert batch(cli, ws, fake, "openai", "--features", "0-2").exit_code == 0
    [row] = [b for b in batches(ws) if b.status == "submitted"]
    old = {}
    for custom_id, line in row.requests.items():
        carried = line["carried"]
        old[custom_id] = {"feature": line["feature"], "stage": line["stage"],
                          "prompt_versions": line["prompt_versions"], "index_hash": carried["index_hash"]}
        if stage == "simulate":
            old[custom_id].update(heldout=carried["heldout"], explanation=carried["explanation"],
                                  explain_usage=carried["usage"], explain_cost=carried["cost"])
    with ws.db() as db:
        db.execute("UPDATE batches SET requests = ? WHERE batch_id = ?", (json.dumps(old), row.batch_id))
    result = batch(cli, ws, fake, "openai", "--features", "0-2", "--wait", "--poll-interval", "0.01")
    assert result.exit_code == 0, result.stderr
    stored = labels(ws)
    assert len(stored) == 3 and all(x.status == "ok" and x.cost_usd > 0 for x in stored.values())
