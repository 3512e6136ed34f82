"""Bench: `index` from a store vs straight from ESM-2, 1 vs 2 Ray workers, flat memory, and a projection.

Measured here (CPU): a randomly initialised ESM-2 of the 8M shape (6 x 320; compute does not depend on
the weights' values) saved as a fair-esm checkpoint, real Swiss-Prot proteins (the shared sample, at
most `--max-length` residues), a random TopK SAE (320 -> `--d-sae`, k = 32). Each run is a fresh
subprocess reporting residues/s and its peak resident memory (ru_maxrss; with Ray, the driver's only:
the workers are Ray's processes, not children).

    store      `embed` once (timed apart), then `index` reading the store
    model      `index --from-model` (no store): ESM-2 inside the passes
    ray-1/2    `index --ray --workers 1|2` (a local Ray; pass 1 on the workers, pass 3 in the driver)
    flat       `index --from-model` at 1x, 4x, 10x the proteins (copies under new accessions)

Then a projection table (not a measurement) for 50,000 and 573,000 proteins with ESM-2 650M and a
10,240-feature SAE, from the assumptions it prints (pass `--gpu-tokens-per-s` with the figure
bench/gpu.py measured on your GPU to replace the assumed one).

    python bench/scale.py [--proteins 24] [--max-length 400] [--scales 1 4 10] [--skip-ray]
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPROT = ROOT.parent / "shared" / "data" / "swissprot" / "sprot_sample.dat.gz"
SAE_ID = "bench"
LAYER = 4
BLOCK = 4096  # residues per block / shard, the same both ways (equal indexes)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_workspace(root: Path, n_proteins: int, max_length: int, scale: int, d_sae: int) -> None:
    import torch

    from sae.model import create_sae, install_sae, weights_hash
    from sae.plm import make_random_esm2, save_esm2_checkpoint
    from storage.protein import Protein
    from storage.proteins import import_proteins
    from storage.saes import SaeRecord, record_sae
    from storage.swissprot import parse_file
    from storage.workspace import Workspace

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proteins = [p for p in parse_file(SPROT) if isinstance(p, Protein) and p.length <= max_length]
    proteins = proteins[:n_proteins]
    copies = [p if c == 0 else p.model_copy(update={"accession": f"{p.accession}-{c}"})
              for c in range(scale) for p in proteins]
    ws = Workspace(root)
    ws.init()
    with ws.db() as db:
        import_proteins(db, copies)
    model, _ = make_random_esm2(num_layers=6, embed_dim=320, attention_heads=20, seed=0)
    checkpoint = save_esm2_checkpoint(model, root / "random_esm2_t6_320.pt")
    torch.manual_seed(0)
    sae = create_sae("topk", 320, d_sae, k=32, plm_model=str(checkpoint), layer=LAYER)
    directory = install_sae(sae, ws.sae_dir(SAE_ID))
    with ws.db() as db:
        record_sae(db, SaeRecord(sae_id=SAE_ID, architecture="topk", d_in=320, d_sae=d_sae, k=32,
                                 plm_model=str(checkpoint), layer=LAYER, path=str(directory),
                                 weights_hash=weights_hash(directory), source="trained"))


def child(task: str, root: Path, workers: int) -> None:
    """One measurement in this fresh process, printed as JSON."""
    from sae.embed import embed_proteins
    from sae.index import build_index
    from sae.stream import StreamOptions
    from storage.workspace import Workspace

    ws = Workspace(root)
    checkpoint = str(root / "random_esm2_t6_320.pt")
    baseline = _rss_mb()
    started = time.perf_counter()
    if task == "embed":
        summary = embed_proteins(ws, checkpoint, LAYER, None, 4096, "cpu", "auto", shard_residues=BLOCK)
        residues = summary.n_residues
    else:
        stream = {"store": StreamOptions(from_model=False),
                  "model": StreamOptions(from_model=True, block_residues=BLOCK),
                  "ray": StreamOptions(ray=True, workers=workers, block_residues=BLOCK)}[task]
        summary = build_index(ws, SAE_ID, device="cpu", stream=stream)
        residues = summary.n_residues
    seconds = time.perf_counter() - started
    store_bytes = sum(p.stat().st_size for p in ws.embeddings_dir.rglob("*") if p.is_file()) \
        if ws.embeddings_dir.exists() else 0
    index_bytes = sum(p.stat().st_size for p in ws.index_path(SAE_ID).rglob("*") if p.is_file()) \
        if ws.index_path(SAE_ID).exists() else 0
    print(json.dumps({"residues": residues, "seconds": round(seconds, 2),
                      "residues_per_s": round(residues / seconds), "baseline_mb": round(baseline),
                      "peak_mb": round(_rss_mb()), "growth_mb": round(_rss_mb() - baseline),
                      "store_mb": round(store_bytes / 2**20, 1), "index_mb": round(index_bytes / 2**20, 1),
                      "hash": getattr(summary, "index_hash", None)}))


def run_child(task: str, root: Path, workers: int = 1) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", task, "--workspace", str(root),
                          "--workers", str(workers)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- the projection ---------------------------------------------------------------------------------------

ASSUMPTIONS = {
    "residues_per_protein": 361,  # Swiss-Prot 2024: ~207M residues / ~573k proteins
    "esm2_650m_params": 650e6,
    "d_model": 1280,
    "d_sae": 10_240,
    "gpu_bf16_flops": 400e12,  # an H100-class GPU's dense bf16 matmul rate (bench/gpu.py measures yours)
    "utilisation": 0.35,  # of that rate reached by ESM-2 batches of ~360-residue proteins (assumed)
    "esm_passes": 3,  # index pass 1 (all), pass 3 (selected, at most all), concepts (all)
    "firing_features_per_protein": 0.03,  # fraction of the SAE's features with a non-zero max per protein
    "block_residues": 52_428,  # embed's shard size at d_model 1,280 (128 MiB of fp16)
    "sample_residues": 10_000_000,  # embed --sample-residues for training
}


def projection(gpu_tokens_per_s: float | None) -> list[dict]:
    a = ASSUMPTIONS
    flops_per_token = 2 * a["esm2_650m_params"] + 2 * a["d_model"] * a["d_sae"]  # ESM-2 + SAE encoder
    rate = gpu_tokens_per_s or a["gpu_bf16_flops"] * a["utilisation"] / flops_per_token
    rows = []
    for proteins in (50_000, 573_000):
        residues = proteins * a["residues_per_protein"]
        nnz = proteins * a["d_sae"] * a["firing_features_per_protein"]
        index_gb = (nnz * 14 + a["d_sae"] * 64 * 200 * 10) / 1e9  # maxima + examples' firing residues
        store_gb = residues * a["d_model"] * 2 / 1e9
        ram_gb = (a["block_residues"] * a["d_model"] * 2 * 3 + nnz * 14 / 8) / 1e9 + 2.0  # blocks + sort
        for gpus in (1, 8):
            hours = a["esm_passes"] * residues / rate / gpus / 3600
            rows.append({"proteins": proteins, "residues": residues, "gpus": gpus, "hours": hours,
                         "index_gb": index_gb, "store_gb": store_gb, "driver_ram_gb": ram_gb,
                         "sample_gb": a["sample_residues"] * a["d_model"] * 2 / 1e9})
    return rows, rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--proteins", type=int, default=24)
    parser.add_argument("--max-length", type=int, default=400)
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 10])
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--gpu-tokens-per-s", type=float, default=None,
                        help="ESM-2 650M + SAE tokens/s on one GPU (bench/gpu.py), instead of the assumption")
    parser.add_argument("--child", choices=["embed", "store", "model", "ray"])
    parser.add_argument("--workspace", type=Path)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.workspace, args.workers)
        return

    rows: dict[str, dict] = {}
    flat: list[tuple[int, dict]] = []
    with tempfile.TemporaryDirectory(prefix="plmlabel-bench-scale-") as tmp:
        root = Path(tmp) / "x1"
        build_workspace(root, args.proteins, args.max_length, 1, args.d_sae)
        rows["model"] = run_child("model", root)
        rows["embed"] = run_child("embed", root)
        rows["store"] = run_child("store", root)
        if not args.skip_ray:
            rows["ray-1"] = run_child("ray", root, 1)
            rows["ray-2"] = run_child("ray", root, 2)
        for name, row in rows.items():
            print(name, json.dumps(row), file=sys.stderr)
        for scale in args.scales:
            if scale == 1:
                flat.append((1, rows["model"]))
                continue
            scaled = Path(tmp) / f"x{scale}"
            build_workspace(scaled, args.proteins, args.max_length, scale, args.d_sae)
            flat.append((scale, run_child("model", scaled)))
            print(f"x{scale}", json.dumps(flat[-1][1]), file=sys.stderr)

    residues = rows["model"]["residues"]
    print(f"\nmeasured on CPU: random ESM-2 6x320 layer {LAYER}, TopK SAE 320 -> {args.d_sae:,}, "
          f"{args.proteins} Swiss-Prot proteins ({residues:,} residues), blocks of {BLOCK:,} residues")
    print(f"{'run':<22} {'res/s':>8} {'peak MB':>8} {'growth MB':>10} {'store MB':>9} {'index MB':>9}  hash")
    for name, label in (("embed", "embed (the store)"), ("store", "index from the store"),
                        ("model", "index --from-model"), ("ray-1", "index --ray, 1 worker"),
                        ("ray-2", "index --ray, 2 workers")):
        if name in rows:
            r = rows[name]
            print(f"{label:<22} {r['residues_per_s']:>8,} {r['peak_mb']:>8,} {r['growth_mb']:>10,} "
                  f"{r['store_mb']:>9} {r['index_mb']:>9}  {r['hash'] or ''}")
    both = 1 / (1 / rows["embed"]["residues_per_s"] + 1 / rows["store"]["residues_per_s"])
    print(f"embed + index from the store: {both:,.0f} res/s; from the model: "
          f"{rows['model']['residues_per_s']:,} res/s ({rows['model']['residues_per_s'] / both:.2f}x), "
          f"with no store on disk")
    if "ray-2" in rows:
        ratio = rows["ray-2"]["residues_per_s"] / rows["ray-1"]["residues_per_s"]
        print(f"2 Ray workers / 1 Ray worker: {ratio:.2f}x (on a shared 2-core machine both workers "
              "compete for the same two cores)")
    print("\npeak RSS of `index --from-model` against the number of proteins (flat = memory does not grow):")
    for scale, r in flat:
        print(f"  x{scale:<3} {r['residues']:>9,} residues  peak {r['peak_mb']:>6,} MB  "
              f"growth {r['growth_mb']:>5,} MB  {r['residues_per_s']:>7,} res/s")

    table, rate = projection(args.gpu_tokens_per_s)
    print("\nPROJECTION (computed from the assumptions below, not measured): ESM-2 650M + 10,240-feature SAE")
    for key, value in ASSUMPTIONS.items():
        print(f"  assume {key} = {value:,}")
    source = ("given (--gpu-tokens-per-s)" if args.gpu_tokens_per_s
              else "assumed: rate x utilisation / FLOPs per token")
    print(f"  tokens/s per GPU = {rate:,.0f} ({source})")
    print(f"{'proteins':>9} {'residues':>12} {'GPUs':>5} {'hours':>7} {'index GB':>9} {'driver RAM GB':>14} "
          f"{'full store GB (not needed)':>27} {'training sample GB':>19}")
    for r in table:
        print(f"{r['proteins']:>9,} {r['residues']:>12,} {r['gpus']:>5} {r['hours']:>7.2f} "
              f"{r['index_gb']:>9.1f} {r['driver_ram_gb']:>14.1f} {r['store_gb']:>27,.0f} "
              f"{r['sample_gb']:>19.1f}")


if __name__ == "__main__":
    main()
