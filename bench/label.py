"""Bench: the labeling job on planted features of real Swiss-Prot proteins.

    baseline        the offline backend (no HTTP): features/s
    fake-<api>-cN   the anthropic / openai SDK path against the local fake server (tests/fake_llm.py)
                    answering after --latency seconds, at concurrency N: features/s, requests, and
                    the estimated cost per feature at the backend's default model
    prompt sizes    characters and estimated tokens of the explain and simulate prompts

    python bench/label.py [--latency 0.5] [--concurrency 1 4 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.backends import BaselineLabeler, llm_stages, make_labeler  # noqa: E402
from agent.labeling.estimate import feature_requests  # noqa: E402
from agent.labeling.runner import run_job  # noqa: E402
from agent.labeling.writer import JobSettings  # noqa: E402
from agent.llm import RetryPolicy  # noqa: E402
from agent.pricing import estimate_tokens  # noqa: E402
from storage.workspace import Workspace  # noqa: E402
from tests.fake_llm import FakeLLM  # noqa: E402
from tests.planted import planted_set, register_sae  # noqa: E402

SWISSPROT = Path(__file__).resolve().parents[2] / "shared" / "data" / "swissprot"


def run(workspace: Workspace, examples, labeler, concurrency: int):
    by_feature = {fe.feature: fe for fe in examples}
    with workspace.db() as db:
        db.execute("delete from predictions")
        db.execute("delete from labels")
        db.db.conn.commit()
        started = time.perf_counter()
        summary = asyncio.run(run_job(db, sae_id="planted", features=list(by_feature), labeler=labeler,
                                      load_examples=by_feature.__getitem__,
                                      settings=JobSettings(concurrency=concurrency)))
        return summary, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()
    os.environ.setdefault("ANTHROPIC_API_KEY", "bench")
    os.environ.setdefault("OPENAI_API_KEY", "bench")

    started = time.perf_counter()
    planted = planted_set(SWISSPROT)
    examples = [fe for _, fe in planted]
    took = time.perf_counter() - started
    print(f"planted {len(examples)} features on real Swiss-Prot proteins in {took:.1f} s")
    workspace = Workspace(Path(tempfile.mkdtemp()) / "ws")
    workspace.init()
    with workspace.db() as db:
        register_sae(db, "planted", examples)

    stages = llm_stages(residue_pass=False)
    explain_sizes = [len(feature_requests(stages, fe)[0][1].text) for fe in examples]
    simulate_sizes = [len(feature_requests(stages, fe)[1][1].text) for fe in examples]
    for name, sizes in (("explain", explain_sizes), ("simulate", simulate_sizes)):
        median = statistics.median(sizes)
        tokens = estimate_tokens("x" * int(median))
        print(f"{name:8s} prompt: median {median:,.0f} chars (~{tokens:,} tokens)")

    summary, seconds = run(workspace, examples, BaselineLabeler(), 4)
    print(f"baseline          {len(examples) / seconds:8.1f} features/s   "
          f"{summary.n_validated}/{len(examples)} validated")
    for api in ("anthropic", "openai"):
        for concurrency in args.concurrency:
            with FakeLLM(latency=args.latency) as fake:
                url = fake.anthropic_url if api == "anthropic" else fake.openai_url
                labeler = make_labeler(api, base_url=url, retry=RetryPolicy(3, 0.01, 0.1))
                summary, seconds = run(workspace, examples, labeler, concurrency)
                print(f"fake-{api}-c{concurrency:<3d} {len(examples) / seconds:8.2f} features/s   "
                      f"{fake.count()} requests, {summary.n_validated}/{len(examples)} validated, "
                      f"${summary.cost_usd / len(examples):.4f}/feature at {labeler.model} "
                      "(fake token counts)")


if __name__ == "__main__":
    main()
