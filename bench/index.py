"""Bench: `build_index` and the concept F1 pass at 1x and 10x the residues, throughput and peak memory.

Real Swiss-Prot proteins (the shared sample, up to 1,022 residues) with random fp16 embeddings of the
ESM-2 8M width (320) and a random TopK SAE (default 4,096 features, k = 32); the 10x workspace repeats
every protein ten times under new accessions (the concept pass keeps a concept when 10 x scale
proteins carry it, so both scales score the same vocabulary). Each measurement runs in a fresh
subprocess, which reports its peak resident memory (ru_maxrss) and the same figure just before the
work started (imports done, SAE loaded), so "growth" is what the work itself needed. Flat memory
means growth does not scale with the residues.

Pass 1 of the index (until its "grouping" stage) is also timed against the bare computation over the
same stored embeddings (one matmul, the activation, a per-protein max per chunk), as ours/bare.

    python bench/index.py [--proteins 200] [--d-sae 4096] [--k 32] [--scales 1 10] [--skip-concepts]
                          [--skip-pass1] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPROT = ROOT.parent / "shared" / "data" / "swissprot" / "sprot_sample.dat.gz"
D_IN = 320
SAE_ID = "bench"
RESIDUES_PER_SHARD = 20_000


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def build_workspace(root: Path, n_proteins: int, scale: int, d_sae: int, k: int) -> None:
    import torch

    from sae.embeddings import EmbeddingStore, store_path
    from sae.model import create_sae, install_sae, weights_hash
    from storage.protein import Protein
    from storage.proteins import import_proteins
    from storage.saes import SaeRecord, record_sae
    from storage.swissprot import parse_file
    from storage.workspace import Workspace

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proteins = [p for p in parse_file(SPROT) if isinstance(p, Protein) and p.length <= 1022][:n_proteins]
    copies = [p if c == 0 else p.model_copy(update={"accession": f"{p.accession}-{c}"})
              for c in range(scale) for p in proteins]
    ws = Workspace(root)
    ws.init()
    with ws.db() as db:
        import_proteins(db, copies)
    plm = ws.load_config().plm
    store = EmbeddingStore.create(store_path(ws.embeddings_dir, plm.model, plm.layer), model=plm.model,
                                  layer=plm.layer, d_model=D_IN)
    rng = np.random.default_rng(0)
    shard, size, number = [], 0, 0
    for protein in copies:
        shard.append((protein.accession, rng.normal(size=(protein.length, D_IN)).astype(np.float16)))
        size += protein.length
        if size >= RESIDUES_PER_SHARD:
            store.write_shard(number, shard)
            shard, size, number = [], 0, number + 1
    if shard:
        store.write_shard(number, shard)
    torch.manual_seed(0)
    sae = create_sae("topk", D_IN, d_sae, k=k, plm_model=plm.model, layer=plm.layer)
    directory = install_sae(sae, ws.sae_dir(SAE_ID))
    with ws.db() as db:
        record_sae(db, SaeRecord(sae_id=SAE_ID, architecture="topk", d_in=D_IN, d_sae=d_sae, k=k,
                                 plm_model=plm.model, layer=plm.layer, path=str(directory),
                                 weights_hash=weights_hash(directory), source="trained"))


def child(task: str, root: Path, min_proteins: int) -> None:
    """Run one task in this (fresh) process and print its figures as JSON."""

    from sae.concepts import evaluate_sae_concepts
    from sae.index import build_index, open_index
    from sae.model import load_sae
    from storage.workspace import Workspace

    ws = Workspace(root)
    load_sae(ws.sae_dir(SAE_ID))  # the imports and one SAE in memory belong to the baseline
    baseline = _rss_mb()
    started = time.perf_counter()
    if task == "index":
        summary = build_index(ws, SAE_ID)
        residues = summary.n_residues
    else:
        evaluate_sae_concepts(ws, SAE_ID, min_proteins=min_proteins)
        residues = open_index(ws, SAE_ID).n_residues
    seconds = time.perf_counter() - started
    peak = _rss_mb()
    print(json.dumps({"task": task, "residues": residues, "seconds": round(seconds, 2),
                      "residues_per_s": round(residues / seconds), "baseline_mb": round(baseline),
                      "peak_mb": round(peak), "growth_mb": round(peak - baseline)}))


def bare_pass1(ws, max_elements: int) -> tuple[float, int]:
    """The bare computation of pass 1 over the same stored embeddings: per chunk of residues one matmul,
    the SAE's activation, and each protein's max per feature. Returns (seconds, residues)."""
    import torch

    from sae.activations import DEFAULT_MAX_ELEMENTS
    from sae.embeddings import EmbeddingStore, store_path
    from sae.model import load_sae

    sae = load_sae(ws.sae_dir(SAE_ID))
    plm = ws.load_config().plm
    store = EmbeddingStore(store_path(ws.embeddings_dir, plm.model, plm.layer))
    weight = sae.W_enc.detach()
    bias = (sae.b_enc - sae.b_dec @ sae.W_enc).detach()
    rows = max(1, (max_elements or DEFAULT_MAX_ELEMENTS) // sae.d_sae)
    started = time.perf_counter()
    residues = 0
    with torch.no_grad():
        for number in store.shard_numbers():
            offsets = store.shard_index(number)["offsets"]
            array = store.shard_array(number)
            first = 0
            while first < len(offsets) - 1:  # whole proteins, up to `rows` residues a chunk
                last = first + 1
                while last < len(offsets) - 1 and offsets[last + 1] - offsets[first] <= rows:
                    last += 1
                x = torch.from_numpy(np.asarray(array[offsets[first]:offsets[last]], dtype=np.float32))
                acts = sae.activation(x @ weight + bias)
                for p in range(first, last):
                    acts[offsets[p] - offsets[first]:offsets[p + 1] - offsets[first]].amax(dim=0)
                residues += offsets[last] - offsets[first]
                first = last
    return time.perf_counter() - started, residues


def pass1_child(root: Path, repeats: int) -> None:
    """Pass 1 of `build_index` (until its "grouping" stage begins) against `bare_pass1`, best of `repeats`."""
    from sae.index import build_index
    from storage.workspace import Workspace

    ws = Workspace(root)
    best = {"bare": float("inf"), "ours": float("inf")}
    residues = 0
    for _ in range(repeats):  # interleaved, so load from other processes hits both alike
        seconds, residues = bare_pass1(ws, 0)
        best["bare"] = min(best["bare"], seconds)
        marks: dict[str, float] = {}

        def progress(stage: str, done: int, total: int, marks=marks) -> None:
            marks.setdefault(stage, time.perf_counter())

        started = time.perf_counter()
        build_index(ws, SAE_ID, progress=progress)
        best["ours"] = min(best["ours"], marks.get("grouping", time.perf_counter()) - started)
    print(json.dumps({"task": "pass1", "residues": residues,
                      "bare_residues_per_s": round(residues / best["bare"]),
                      "ours_residues_per_s": round(residues / best["ours"]),
                      "ratio": round(best["bare"] / best["ours"], 2)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--proteins", type=int, default=200)
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--skip-concepts", action="store_true")
    parser.add_argument("--child", choices=["index", "concepts", "pass1"])
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs (pass 1 vs bare)")
    parser.add_argument("--skip-pass1", action="store_true")
    parser.add_argument("--workspace", type=Path)
    parser.add_argument("--min-proteins", type=int, default=10)
    args = parser.parse_args()
    if args.child == "pass1":
        pass1_child(args.workspace, args.repeats)
        return
    if args.child:
        child(args.child, args.workspace, args.min_proteins)
        return
    rows, pass1 = [], None
    with tempfile.TemporaryDirectory(prefix="plmlabel-bench-index-") as tmp:
        for scale in args.scales:
            root = Path(tmp) / f"x{scale}"
            t = time.perf_counter()
            build_workspace(root, args.proteins, scale, args.d_sae, args.k)
            print(f"x{scale}: workspace ready in {time.perf_counter() - t:.1f} s", file=sys.stderr)
            for task in ["index"] + ([] if args.skip_concepts else ["concepts"]):
                # the same concept vocabulary at every scale: copies multiply each concept's proteins
                out = subprocess.run([sys.executable, __file__, "--child", task, "--workspace", str(root),
                                      "--min-proteins", str(10 * scale)], check=True, capture_output=True,
                                     text=True)
                row = {"scale": scale, **json.loads(out.stdout.strip().splitlines()[-1])}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
            if pass1 is None and not args.skip_pass1:
                command = [sys.executable, __file__, "--child", "pass1", "--workspace", str(root),
                           "--repeats", str(args.repeats)]
                out = subprocess.run(command, check=True, capture_output=True, text=True)
                pass1 = {"scale": scale, **json.loads(out.stdout.strip().splitlines()[-1])}
                print(json.dumps(pass1), file=sys.stderr)
    print(f"\nproteins x1 = {args.proteins}, d_in = {D_IN}, d_sae = {args.d_sae}, k = {args.k}")
    print(f"{'task':<9} {'scale':>5} {'residues':>10} {'seconds':>8} {'res/s':>9} {'baseline MB':>12} "
          f"{'peak MB':>8} {'growth MB':>10}")
    for r in rows:
        print(f"{r['task']:<9} {r['scale']:>5} {r['residues']:>10,} {r['seconds']:>8.1f} "
              f"{r['residues_per_s']:>9,} {r['baseline_mb']:>12,} {r['peak_mb']:>8,} {r['growth_mb']:>10,}")
    if pass1:
        print(f"\npass 1 (x{pass1['scale']}, {pass1['residues']:,} residues): "
              f"ours {pass1['ours_residues_per_s']:,} res/s, bare encode (matmul + activation + "
              f"per-protein max) {pass1['bare_residues_per_s']:,} res/s: "
              f"ours/bare = {pass1['ratio']}x (target >= 0.8x)")


if __name__ == "__main__":
    main()
