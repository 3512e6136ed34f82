"""Shared set-up of the agent tests: a labeling job over given features, an SDK against the fake server."""

from __future__ import annotations

import asyncio

from agent.agentic.tools import Limits
from agent.backends import make_labeler
from agent.labeling.runner import run_job
from agent.labeling.writer import JobSettings
from agent.llm import RetryPolicy
from storage.workspace import Workspace
from tests.fake_llm import FakeLLM
from tests.planted import register_sae

FAST = RetryPolicy(max_attempts=2, initial_wait=0.001, max_wait=0.01)


def llm_labeler(provider: str, fake: FakeLLM, limits: Limits | None = None):
    url = fake.anthropic_url if provider == "anthropic" else fake.openai_url
    return make_labeler(provider, base_url=url, retry=FAST, timeout_s=5.0, agent=limits or Limits())


def label_features(tmp_path, features, labeler, name: str = "ws"):
    ws = Workspace(tmp_path / name)
    ws.init()
    db = ws.db()
    register_sae(db, features[0].sae_id, features)
    by_feature = {fe.feature: fe for fe in features}
    summary = asyncio.run(run_job(db, sae_id=features[0].sae_id, features=list(by_feature), labeler=labeler,
                                  load_examples=by_feature.__getitem__, settings=JobSettings(concurrency=1)))
    return db, summary
