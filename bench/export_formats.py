"""Bench: `plmlabel export` per streaming format at 1k and 10k features, seconds and peak RSS.

A workspace per size: real Swiss-Prot proteins (the shared sample), planted embeddings, a random ReLU
SAE with that many features, a real activation index over them, and one synthetic label per feature.
Each export runs in a fresh subprocess that reports its peak resident memory (ru_maxrss) and the same
figure just before the export began (imports done), so "growth" is what the export itself needed:
flat memory means growth does not scale with the number of features.

    python bench/export_formats.py [--sizes 1000 10000] [--formats interprot neuronpedia interplm jsonl]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from agent.cli import main
import agent.export_stream, sae.model, storage.export_html  # noqa: F401  (imports are not the export)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    main(["export", "bench", "--format", sys.argv[2], "--out", sys.argv[3], "--workspace", sys.argv[4]])
finally:
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_kb": peak, "before_kb": before}), file=sys.stderr)
"""


def build_workspace(root: Path, d_sae: int):
    import torch

    from sae.index import build_index
    from sae.model import create_sae
    from storage.workspace import Workspace
    from tests.conftest import SHARED_SWISSPROT
    from tests.index_fixtures import D_IN, import_sample, register_sae, sample_proteins, write_embeddings
    from tests.test_query import PROVENANCE

    ws = Workspace(root)
    ws.init()
    proteins = sample_proteins(SHARED_SWISSPROT, n_other=20)
    import_sample(ws, proteins)
    write_embeddings(ws, proteins)
    torch.manual_seed(0)
    sae = create_sae("relu", D_IN, d_sae)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(D_IN, d_sae) * 0.5)
        sae.b_enc.fill_(-1.5)  # sparse: a feature fires on a few percent of residues
        sae.b_dec.zero_()
    register_sae(ws, sae, "bench")
    build_index(ws, "bench", seed=0)
    with ws.db() as db:
        db.table("runs").insert({"run_id": PROVENANCE["run_id"], "sae_id": "bench", "kind": "label",
                                 "status": "completed", "args": "{}"})
        db.table("labels").insert_all(
            {"sae_id": "bench", "feature": f, "status": "ok", "label": f"synthetic feature {f}",
             "description": f"Synthetic description of feature {f}: fires on residues of bench proteins.",
             "concepts": "[]", "confidence": 0.5, "pearson": (f % 100) / 100, "spearman": 0.5,
             "n_heldout": 24, "validated": int(f % 100 >= 50), **PROVENANCE}
            for f in range(d_sae))
        db.db.conn.commit()
    return ws, len(proteins)


def run_export(ws_root: Path, fmt: str, out: Path) -> dict:
    child = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), fmt, str(out), str(ws_root)],
                           capture_output=True, text=True)
    if child.returncode != 0:
        raise SystemExit(f"export {fmt} failed: {child.stderr.strip()[-2000:]}")
    figures = json.loads(child.stderr.strip().splitlines()[-1])
    n_files = sum(1 for p in out.rglob("*") if p.is_file())
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {**figures, "files": n_files, "mb": size / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--formats", nargs="+", default=["interprot", "neuronpedia", "interplm", "jsonl"])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="plmlabel-bench-export-") as tmp:
        for size in args.sizes:
            start = time.perf_counter()
            ws, n_proteins = build_workspace(Path(tmp) / f"ws{size}", size)
            print(f"workspace with {size} features over {n_proteins} proteins built in "
                  f"{time.perf_counter() - start:.1f} s", flush=True)
            for fmt in args.formats:
                figures = run_export(ws.root, fmt, Path(tmp) / f"out{size}-{fmt}")
                rows.append((size, fmt, figures))
                print(f"  {fmt:12s} {figures['seconds']:7.1f} s  peak {figures['peak_kb'] / 1024:7.1f} MB  "
                      f"growth {(figures['peak_kb'] - figures['before_kb']) / 1024:6.1f} MB  "
                      f"{figures['files']} files, {figures['mb']:.1f} MB", flush=True)
    if len(args.sizes) > 1:
        small, large = min(args.sizes), max(args.sizes)
        print(f"\nratios {large} / {small} features "
              f"(time should grow ~{large // small}x, peak RSS stay flat):")
        for fmt in args.formats:
            a = next(f for s, x, f in rows if s == small and x == fmt)
            b = next(f for s, x, f in rows if s == large and x == fmt)
            print(f"  {fmt:12s} time x{b['seconds'] / max(a['seconds'], 1e-9):5.1f}   "
                  f"peak RSS x{b['peak_kb'] / a['peak_kb']:4.2f}   "
                  f"growth {(a['peak_kb'] - a['before_kb']) / 1024:.1f} -> "
                  f"{(b['peak_kb'] - b['before_kb']) / 1024:.1f} MB")


if __name__ == "__main__":
    main()
