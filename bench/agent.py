"""Bench: one-shot against the agent on planted features of real Swiss-Prot proteins.

Features fire on the proteins a rule picks: single concepts, and combinations one-shot cannot name
(a concept restricted to an organism group or a location, a residue type inside a domain, one of
two concepts); each is also shuffled (its activations dealt to random proteins: nothing explains
it). Each set is labeled four ways: the offline baseline one-shot and with the baseline agent, and
through the anthropic SDK against the local fake server (tests/fake_llm.py, its scripted agent in
tests/fake_agent.py) one-shot and with the agent. Reported per way: features named (the label,
description and concepts mention every key of the planted rule) and validated (test r >= 0.5),
median test r, tool calls and requests per feature, tokens and cost per feature (list price of
the backend's default model, from the token counts the server reported, prompt-cache reads at
their price), and the cost of an agent feature over a one-shot one.

    python bench/agent.py [--limit N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.agentic.tools import Limits  # noqa: E402
from agent.agentic.view import MemoryCorpus  # noqa: E402
from agent.backends import BaselineLabeler, make_labeler  # noqa: E402
from agent.labeling.agent_stage import AgentStage  # noqa: E402
from agent.labeling.runner import run_job  # noqa: E402
from agent.labeling.writer import JobSettings  # noqa: E402
from agent.llm import RetryPolicy  # noqa: E402
from storage.labels import get_label  # noqa: E402
from storage.workspace import Workspace  # noqa: E402
from tests.agent_fixtures import build_split, either, only_if, plant_rule, region, shuffled  # noqa: E402
from tests.fake_llm import FakeLLM  # noqa: E402
from tests.planted import PLANTED, load_proteins, register_sae  # noqa: E402

SWISSPROT = Path(__file__).resolve().parents[2] / "shared" / "data" / "swissprot"


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # "single" or "combination"
    keys: tuple[str, ...]  # what a label naming it must mention (lowercase)
    fires: object


def _planted(name: str):
    concept = next(p for p in PLANTED if p.name == name)
    import random

    def fires(protein):
        return (
            concept.positions(protein, random.Random(protein.accession)) if concept.carries(protein) else []
        )

    return fires


def _binding(ligand: str):
    def fires(protein):
        return [
            p
            for f in protein.features
            if f.type == "Binding site" and ligand in (f.ligand or "") and f.start
            for p in range(f.start, (f.end or f.start) + 1)
        ]

    return fires


def _residue_in(residue: str, type_: str):
    def fires(protein):
        return [
            p
            for f in protein.features
            if f.type == type_ and f.start and f.end
            for p in range(f.start, f.end + 1)
            if protein.sequence[p - 1 : p] == residue
        ]

    return fires


def cases() -> list[Case]:
    singles = [
        Case(name, "single", (next(p for p in PLANTED if p.name == name).key,), _planted(name))
        for name in (
            "Zinc finger",
            "Transmembrane",
            "Protein kinase domain",
            "Signal peptide",
            "ATP binding site",
            "Disulfide bond",
            "Coiled coil",
            "Kinase (keyword)",
        )
    ]
    human = lambda p: (p.organism or "").startswith("Homo sapiens")  # noqa: E731
    combos = [
        Case(
            "Transmembrane, human proteins only",
            "combination",
            ("transmembrane", "homo sapiens"),
            only_if(region("Transmembrane"), human),
        ),
        Case(
            "Zn(2+) binding in nuclear proteins",
            "combination",
            ("zn(2+)", "nucleus"),
            only_if(_binding("Zn(2+)"), lambda p: "Nucleus" in p.keywords),
        ),
        Case(
            "Disulfide bond in secreted proteins",
            "combination",
            ("disulfide", "secreted"),
            only_if(_planted("Disulfide bond"), lambda p: "Secreted" in p.keywords),
        ),
        Case(
            "Kinase in cytoplasmic proteins",
            "combination",
            ("kinase", "cytoplasm"),
            only_if(_planted("Kinase (keyword)"), lambda p: "Cytoplasm" in p.keywords),
        ),
        Case(
            "Signal peptide or transmembrane",
            "combination",
            ("signal", "transmembrane"),
            either(region("Signal"), region("Transmembrane")),
        ),
        Case(
            "Cysteines inside zinc fingers", "combination", ("zinc finger",), _residue_in("C", "Zinc finger")
        ),
    ]
    return singles + combos


def features(proteins, chosen: list[Case], shuffle: bool):
    """The features' examples, and the corpus an index would offer the agent (every protein's max)."""
    out, corpus = [], {}
    for i, case in enumerate(chosen):
        profiles = plant_rule(proteins, case.fires, seed=i)
        if shuffle:
            profiles = shuffled(proteins, profiles, seed=100 + i)
        fe = build_split(proteins, profiles, sae_id="bench", feature=i, seed=i)
        out.append(fe)
        corpus[i] = [
            (p, profiles[p.accession].peak / fe.max_activation if p.accession in profiles else 0.0)
            for p in proteins
        ]
    return out, MemoryCorpus(corpus)


def named(label, case: Case) -> bool:
    text = " ".join([label.label or "", label.description or "", *label.concepts]).lower()
    return all(key in text for key in case.keys)


def run_way(examples, labeler, chosen, corpus):
    for stage in labeler.stages:
        if isinstance(stage, AgentStage):
            stage.corpus = corpus  # what `plmlabel label --agent` gives it from the index
    ws = Workspace(Path(tempfile.mkdtemp(prefix="bench-agent-")) / "ws")
    ws.init()
    db = ws.db()
    register_sae(db, "bench", examples)
    by_feature = {fe.feature: fe for fe in examples}
    started = time.perf_counter()
    summary = asyncio.run(
        run_job(
            db,
            sae_id="bench",
            features=list(by_feature),
            labeler=labeler,
            load_examples=by_feature.__getitem__,
            settings=JobSettings(concurrency=4),
        )
    )
    seconds = time.perf_counter() - started
    rows = []
    for fe, case in zip(examples, chosen, strict=True):
        label = get_label(db, "bench", fe.feature)
        trace = json.loads(label.trace) if label.trace else None
        rows.append(
            {
                "case": case,
                "label": label,
                "named": named(label, case),
                "validated": label.validated,
                "r": label.pearson,
                "oneshot_r": label.oneshot_pearson,
                "tool_calls": trace["tool_calls"] if trace else 0,
                "tokens": (label.input_tokens or 0) + (label.output_tokens or 0),
                "cost": label.cost_usd,
            }
        )
    return summary, rows, seconds


def report(way: str, rows, requests: int | None, kind: str | None = None) -> dict:
    chosen = [r for r in rows if kind is None or r["case"].kind == kind]
    rs = [r["r"] if r["r"] is not None else 0.0 for r in chosen]
    costs = [r["cost"] for r in chosen if r["cost"] is not None]
    out = {
        "way": way,
        "n": len(chosen),
        "named": sum(r["named"] for r in chosen),
        "validated": sum(r["validated"] for r in chosen),
        "median_r": statistics.median(rs) if rs else None,
        "tool_calls": statistics.fmean(r["tool_calls"] for r in chosen) if chosen else 0,
        "tokens": statistics.fmean(r["tokens"] for r in chosen) if chosen else 0,
        "cost": statistics.fmean(costs) if costs else 0.0,
        "requests": (requests / len(rows)) if requests is not None and rows else None,
    }
    return out


def line(row: dict) -> str:
    req = f"{row['requests']:.1f}" if row["requests"] is not None else "  - "
    return (
        f"  {row['way']:<28} named {row['named']:>2}/{row['n']:<2} "
        f"validated {row['validated']:>2}/{row['n']:<2} "
        f"median r {row['median_r']:.2f}  calls {row['tool_calls']:4.1f}  requests {req:>4}  "
        f"tokens {row['tokens']:8.0f}  ${row['cost']:.4f}/feature"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=None, help="only the first N cases")
    parser.add_argument("--baseline-only", action="store_true", help="skip the fake-server ways")
    args = parser.parse_args()
    os.environ.setdefault("ANTHROPIC_API_KEY", "bench")
    started = time.perf_counter()
    proteins = load_proteins(SWISSPROT)
    chosen = cases()[: args.limit]
    print(
        f"{len(proteins)} Swiss-Prot proteins, {len(chosen)} planted features "
        f"({sum(c.kind == 'combination' for c in chosen)} combinations); loaded in "
        f"{time.perf_counter() - started:.1f}s"
    )
    retry = RetryPolicy(max_attempts=2, initial_wait=0.001, max_wait=0.01)
    results: dict[str, dict] = {}
    for shuffle in (False, True):
        examples, corpus = features(proteins, chosen, shuffle)
        title = "shuffled" if shuffle else "planted"
        print(f"\n{title}:")
        ways = (
            ("baseline one-shot", lambda: BaselineLabeler()),
            ("baseline agent", lambda: BaselineLabeler(Limits())),
            ("fake-anthropic one-shot", None),
            ("fake-anthropic agent", None),
        )
        for way, build in ways[: 2 if args.baseline_only else 4]:
            fake = None
            if build is None:
                fake = FakeLLM().start()
                agent = Limits() if way.endswith("agent") else None
                labeler = make_labeler(
                    "anthropic", base_url=fake.anthropic_url, retry=retry, timeout_s=10, agent=agent
                )
            else:
                labeler = build()
            _, rows, seconds = run_way(examples, labeler, chosen, corpus)
            requests = len(fake.requests) if fake else None
            if fake:
                fake.stop()
            results[f"{title}/{way}"] = {
                "all": report(way, rows, requests),
                "combination": report(way + " (combos)", rows, requests, "combination"),
                "single": report(way + " (singles)", rows, requests, "single"),
            }
            print(line(results[f"{title}/{way}"]["all"]) + f"  [{seconds:.1f}s]")
            if not shuffle:
                print(line(results[f"{title}/{way}"]["combination"]))
                print(line(results[f"{title}/{way}"]["single"]))
            if not shuffle and way.endswith("agent"):
                for r in rows:
                    print(
                        f"      {r['case'].name:<40} {'named' if r['named'] else '     '} "
                        f"{'valid' if r['validated'] else '     '} r {r['r'] or 0:5.2f} "
                        f"(one-shot {r['oneshot_r'] if r['oneshot_r'] is not None else float('nan'):5.2f})  "
                        f"{r['label'].label}"
                    )
    if args.baseline_only:
        return
    one = results["planted/fake-anthropic one-shot"]["all"]
    agent = results["planted/fake-anthropic agent"]["all"]
    print(
        f"\ncost per feature, fake-anthropic at {make_labeler_model()} list price: "
        f"agent ${agent['cost']:.4f} / "
        f"one-shot ${one['cost']:.4f} = {agent['cost'] / one['cost']:.2f}x (target <= 2.5x); "
        f"tokens {agent['tokens'] / one['tokens']:.2f}x"
    )
    for prefix in ("baseline", "fake-anthropic"):
        a, b = results[f"shuffled/{prefix} one-shot"]["all"], results[f"shuffled/{prefix} agent"]["all"]
        print(f"shuffled, {prefix}: validated one-shot {a['validated']} vs agent {b['validated']}")
    print(f"total {time.perf_counter() - started:.1f}s")


def make_labeler_model() -> str:
    from agent.llm import PROVIDERS

    return PROVIDERS["anthropic"].default_model


if __name__ == "__main__":
    main()
