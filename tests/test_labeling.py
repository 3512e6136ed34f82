"""The two transports of one protocol behave alike: same labels and scores (batch at half price), same stop
rules, same handling of an unreadable index; the per-residue pass through both real SDKs; secrets echoed
by a server never kept or shown."""

from __future__ import annotations

import asyncio
import json

import pytest

import prompts
from agent.backends import Labeler, make_labeler
from agent.labeling.batch import BatchSettings
from agent.labeling.protocol import CallStage, ExplainStage, SimulateStage, placeholder_work
from agent.labeling.runner import run_job
from agent.labeling.writer import JobSettings
from agent.llm import RetryPolicy
from agent.residues import build_residue_requests, residue_windows
from sae.index import FeatureExamples, ResidueActivation
from storage.errors import NotFoundError
from storage.export import write_export
from storage.labels import get_label, get_run, list_labels
from storage.workspace import Workspace
from tests.fake_llm import FakeLLM
from tests.planted import planted_set, register_sae

FAST = RetryPolicy(max_attempts=2, initial_wait=0.001, max_wait=0.01)
TRANSPORTS = ["sync", "batch"]
PROVIDERS = ["anthropic", "openai"]
SECRET = "sk-ant-SECRET-echoed-by-a-proxy-0815"


@pytest.fixture
def examples(swissprot_dir) -> list[FeatureExamples]:
    return [fe for _, fe in planted_set(swissprot_dir)]


@pytest.fixture
def keys(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET.replace("ant", "oai"))


def new_db(tmp_path, name: str, examples):
    ws = Workspace(tmp_path / name)
    ws.init()
    db = ws.db()
    register_sae(db, "planted", examples)
    return db


def labeler(provider: str, fake: FakeLLM, **options):
    url = fake.anthropic_url if provider == "anthropic" else fake.openai_url
    return make_labeler(provider, base_url=url, retry=FAST, timeout_s=5.0, **options)


def run(db, examples, lab, transport: str, *, features=None, load=None, **settings):
    by_feature = {fe.feature: fe for fe in examples}
    batch = BatchSettings(wait=True, poll_interval_s=0.01) if transport == "batch" else None
    return asyncio.run(
        run_job(
            db,
            sae_id="planted",
            features=features if features is not None else list(by_feature),
            labeler=lab,
            load_examples=load or by_feature.__getitem__,
            settings=JobSettings(**settings),
            batch=batch,
        )
    )


# --- the same labels, at half the price -----------------------------------------------------------------
@pytest.mark.parametrize("provider", PROVIDERS)
def test_sync_and_batch_give_identical_labels_and_scores_at_half_the_cost(tmp_path, examples, keys, provider):
    chosen = examples[:6]
    stored = {}
    for transport in TRANSPORTS:
        db = new_db(tmp_path, transport, examples)
        with FakeLLM() as fake:
            summary = run(
                db, chosen, labeler(provider, fake, residue_pass=True), transport, residue_pass=True
            )
        assert summary.status == "completed" and summary.n_labeled == len(chosen), summary.message
        stored[transport] = {x.feature: x for x in list_labels(db, "planted", with_predictions=True)}
        assert get_run(db, summary.run_id).cost_usd == pytest.approx(summary.cost_usd)
        db.close()
    sync, batch = stored["sync"], stored["batch"]
    for feature, label in sync.items():
        other = batch[feature]
        for name in (
            "label",
            "description",
            "concepts",
            "pearson",
            "spearman",
            "residue_pearson",
            "validated",
            "n_heldout",
            "explain_prompt_version",
            "simulate_prompt_version",
        ):
            assert getattr(label, name) == getattr(other, name), (feature, name)
        assert label.predictions == other.predictions
    assert all(x.residue_pearson is not None for x in sync.values())
    assert sum(x.residue_pearson > 0.5 for x in sync.values()) >= 0.8 * len(chosen)
    assert sum(x.cost_usd for x in batch.values()) == pytest.approx(
        0.5 * sum(x.cost_usd for x in sync.values()), rel=0.1
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_residue_pass_is_stored_and_exported(tmp_path, examples, keys, transport):
    ws = Workspace(tmp_path / "ws")
    ws.init()
    with ws.db() as db:
        register_sae(db, "planted", examples)
        with FakeLLM() as fake:
            summary = run(
                db, examples[:2], labeler("openai", fake, residue_pass=True), transport, residue_pass=True
            )
            stages = {r.stage for r in fake.requests}
        assert summary.ok and "residue_simulation" in stages
        stored = get_label(db, "planted", 0)
        assert stored.residue_pearson is not None
        assert stored.residue_prompt_version == prompts.load("residues").version
        from agent.export_bundle import gather_bundle

        write_export(gather_bundle(ws, db, "planted", "jsonl"), "jsonl", tmp_path / "out")
    exported = "".join(p.read_text() for p in (tmp_path / "out").rglob("*.jsonl"))
    assert f'"residue_pearson": {stored.residue_pearson}' in exported


def test_the_residue_prompt_never_contains_activations(examples):
    fe = examples[1]
    windows = residue_windows(fe)
    assert windows and any(max(w.actual) > 0 for w in windows) and any(max(w.actual) == 0 for w in windows)
    prompt = build_residue_requests(placeholder_work(fe).explanation, windows).text
    # The same proteins and positions with other activation values give the very same prompt ...
    scaled = fe.model_copy(
        update={
            "heldout_firing": tuple(
                tuple(ResidueActivation(position=r.position, value=r.value * 3.7) for r in firing)
                for firing in fe.heldout_firing
            ),
            "max_activation": fe.max_activation * 3.7,
        }
    )
    assert (
        build_residue_requests(placeholder_work(scaled).explanation, residue_windows(scaled)).text == prompt
    )
    # ... and no activation value, raw or normalised, appears in it.
    values = {r.value for firing in fe.heldout_firing for r in firing} | set(fe.heldout_actuals)
    for value in values - {0.0}:
        for shown in (f"{value}", f"{value:.3f}", f"{value / fe.max_activation:.3f}"):
            assert shown not in prompt
    assert "activation=" not in prompt and "[" not in prompt.split("</explanation>")[1]


def test_the_residue_pass_is_in_the_estimate(examples):
    from agent.backends import llm_stages
    from agent.labeling.estimate import stages_cost

    without = stages_cost(llm_stages(False), "claude-sonnet-4-5", examples[0])
    with_pass = stages_cost(llm_stages(True), "claude-sonnet-4-5", examples[0])
    assert with_pass > without > 0


# --- the same stop rules --------------------------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_consecutive_failures_stop_both_transports(tmp_path, examples, keys, transport):
    db = new_db(tmp_path, "ws", examples)
    with FakeLLM(error_rate=1.0, errors=("500",)) as fake:
        summary = run(
            db, examples, labeler("openai", fake), transport, concurrency=1, max_consecutive_failures=3
        )
        sent = set(fake.features_requested())
    assert summary.status == "failed" and "3 failures in a row" in summary.message
    stored = list_labels(db, "planted")
    assert all(x.status == "failed" and "500" in x.error for x in stored)
    assert {x.feature for x in stored} == sent  # every feature sent ends stored with its reason
    assert summary.n_failed == len(stored) and summary.n_not_started == len(examples) - len(stored)
    if transport == "sync":
        assert len(stored) == 3  # nothing started after the third failure


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_budget_stop_names_the_one_figure_the_summary_shows(tmp_path, examples, keys, transport):
    db = new_db(tmp_path, "ws", examples)
    budget = 0.06 if transport == "sync" else 0.03
    with FakeLLM() as fake:
        summary = run(db, examples, labeler("anthropic", fake), transport, concurrency=1, budget_usd=budget)
    assert summary.status == "budget_exhausted" and 0 < summary.n_labeled < len(examples)
    assert summary.n_not_started == len(examples) - summary.n_labeled
    assert f"spent ${summary.cost_usd:.4f}" in summary.message and summary.cost_usd <= budget
    assert get_run(db, summary.run_id).cost_usd == pytest.approx(summary.cost_usd)
    assert summary.exit_code == 3


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_unreadable_index_stores_the_failure_and_stops_both_transports(
    tmp_path, examples, keys, transport
):
    db = new_db(tmp_path, "ws", examples)
    by_feature = {fe.feature: fe for fe in examples}

    def load(feature: int) -> FeatureExamples:
        if feature == 3:
            raise NotFoundError("2 proteins of the index of 'planted' are no longer in the database")
        return by_feature[feature]

    with FakeLLM() as fake:
        summary = run(
            db,
            examples,
            labeler("openai", fake),
            transport,
            concurrency=1,
            load=load,
            features=list(range(8)),
        )
    assert summary.status == "failed" and "could not load its examples" in summary.message
    broken = get_label(db, "planted", 3)
    assert broken.status == "failed" and "no longer in the database" in broken.error
    assert {x.feature for x in list_labels(db, "planted") if x.status == "ok"} == {0, 1, 2}
    assert summary.n_not_started == 4 and summary.n_failed == 1


# --- secrets an echoing server sends back ---------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_key_echoed_by_a_proxy_is_never_stored_or_shown(tmp_path, examples, keys, transport):
    db = new_db(tmp_path, "ws", examples)
    with FakeLLM(script=["401_echo"]) as fake:
        summary = run(db, examples[:2], labeler("anthropic", fake), transport, concurrency=1)
        assert fake.requests[0].api_key == SECRET  # the key was sent, and came back in the body
    texts = [
        summary.message,
        *summary.warnings,
        *(f.error for f in summary.failures),
        *(x.error or "" for x in list_labels(db, "planted")),
        get_run(db, summary.run_id).message,
    ]
    assert any("[redacted]" in t for t in texts)
    assert not any(SECRET in t for t in texts)
    db.close()
    raw = b"".join(p.read_bytes() for p in (tmp_path / "ws").glob("plmlabel.db*"))
    assert SECRET.encode() not in raw


# --- a further stage plugs in without touching the transports -----------------------------------------
class Investigate(CallStage):
    """Stands in for the agent loop: it converses on its own (here: one real call), keeps a trace and a
    one-shot score, and may revise the explanation."""

    name = "agent"

    async def run(self, work, llm):
        request = SimulateStage().request(work)
        result = await llm.generate(request)
        work.trace = {"steps": [{"tool": "simulate", "n": len(result.parsed.model_dump())}]}
        work.test_pearson = 0.42
        work.explanation = work.explanation.model_copy(
            update={"label": work.explanation.label + " (revised)"}
        )
        return result.usage


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_further_stage_plugs_in_and_its_trace_is_stored(tmp_path, examples, keys, transport):
    db = new_db(tmp_path, "ws", examples)
    with FakeLLM() as fake:
        base = labeler("openai", fake)
        lab = Labeler(
            "openai", base.model, [ExplainStage(), Investigate(), SimulateStage()], base.llm, batch=True
        )
        summary = run(db, examples[:3], lab, transport)
    assert summary.ok and summary.n_labeled == 3
    for feature in range(3):
        stored = get_label(db, "planted", feature)
        assert stored.label.endswith("(revised)") and stored.oneshot_pearson == 0.42
        assert json.loads(stored.trace) == {
            "steps": [{"tool": "simulate", "n": len(examples[feature].heldout)}]
        }
        assert stored.cost_usd > 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_concurrency_bounds_every_call_on_both_transports(tmp_path, examples, keys, transport):
    """Batch repairs (synchronous calls made while collecting) respect --concurrency like sync calls."""
    db = new_db(tmp_path, "ws", examples)
    script = ["bad_answer"] * 8 if transport == "batch" else []  # every explain line of the batch malformed
    with FakeLLM(latency=0.05, script=script) as fake:
        summary = run(db, examples[:8], labeler("openai", fake), transport, concurrency=2)
        repairs = [r for r in fake.requests if r.path == "/v1/chat/completions" and r.n_messages >= 3]
        peak = fake.peak_in_flight
    assert summary.ok and summary.n_labeled == 8
    assert len(repairs) == (8 if transport == "batch" else 0)
    assert peak == 2  # in parallel, never more than --concurrency


# --- the real index, end to end through the command ----------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("provider", PROVIDERS)
def test_the_residue_pass_on_a_real_index_through_the_command(cli, swissprot_dir, tmp_path, keys, provider):
    """No loader is patched: the examples and held-out residue activations come from `plmlabel index`."""
    from tests.index_fixtures import TM_FEATURE, ZF_FEATURE, copy_template

    ws = copy_template(swissprot_dir, tmp_path / "ws")
    features = f"{TM_FEATURE},{ZF_FEATURE}"
    with FakeLLM() as fake:
        url = fake.anthropic_url if provider == "anthropic" else fake.openai_url
        dry = cli(
            "label",
            "planted",
            "--features",
            features,
            "--backend",
            provider,
            "--residue-pass",
            "--dry-run",
            "--json",
            "-w",
            ws.root,
        )
        result = cli(
            "label",
            "planted",
            "--features",
            features,
            "--backend",
            provider,
            "--base-url",
            url,
            "--residue-pass",
            "--json",
            "-w",
            ws.root,
        )
        stages = {r.stage for r in fake.requests}
    assert dry.exit_code == 0 and {r["stage"] for r in dry.json()["features"][0]["requests"]} == {
        "explain",
        "simulate",
        "residues",
    }
    assert result.exit_code in (0, 1), result.stderr
    assert "residue_simulation" in stages
    with ws.db() as db:
        stored = get_label(db, "planted", TM_FEATURE)
    assert stored.status == "ok" and stored.residue_pearson is not None and stored.residue_pearson > 0.5
    shown = cli("show", "planted", str(TM_FEATURE), "-w", ws.root)
    assert "per-residue r" in shown.stdout
