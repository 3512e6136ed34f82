"""Bench: sae.plm.embed_sequences against a bare fair-esm forward on the same sequences.

A randomly initialised ESM-2 of the 8M shape (6 layers x 320 dims, 20 heads; compute does not depend on
the weights' values), saved and loaded as a fair-esm checkpoint, over real Swiss-Prot sequences of at
most 1,022 residues read from the shared sample. Three ways to get layer-L per-residue embeddings:

    ours       embed_sequences: length-sorted, token-budget batches, forward stopped at layer L
    bare-1     fair-esm BatchConverter + model(tokens, repr_layers=[L]), one sequence at a time
    bare-8     the same in fixed batches of 8 in file order (no length sorting)

Reported in residues/s and as ratios (ours / bare); `max|diff|` checks all three give the same numbers.

    python bench/embed.py [--n 100] [--layers 4 6] [--device auto] [--dtype auto] [--max-tokens 4096]
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sae.plm import MAX_RESIDUES, embed_sequences, load_esm, make_random_esm2, save_esm2_checkpoint  # noqa: E402

SPROT = Path(__file__).resolve().parents[2] / "shared" / "data" / "swissprot" / "sprot_sample.dat.gz"


def read_sequences(path: Path, n: int) -> list[tuple[str, str]]:
    """The first `n` entries of at most MAX_RESIDUES residues: (accession, sequence), in file order."""
    entries, accession, residues, in_sq = [], None, [], False
    with gzip.open(path, "rt") as handle:
        for line in handle:
            if line.startswith("AC   ") and accession is None:
                accession = line[5:].split(";")[0].strip()
            elif line.startswith("SQ   "):
                in_sq = True
            elif line.startswith("//"):
                sequence = "".join(residues)
                if len(sequence) <= MAX_RESIDUES:
                    entries.append((accession, sequence))
                if len(entries) == n:
                    break
                accession, residues, in_sq = None, [], False
            elif in_sq:
                residues.append(line.replace(" ", "").strip())
    return entries


def bare(plm, items, layer: int, batch_size: int) -> dict[str, np.ndarray]:
    out = {}
    with torch.no_grad():
        for i in range(0, len(items), batch_size):
            labels, strs, tokens = plm.batch_converter(items[i:i + batch_size])
            reps = plm.model(tokens.to(plm.device), repr_layers=[layer])["representations"][layer]
            reps = reps.float().cpu().numpy()
            for row, (label, seq) in enumerate(zip(labels, strs, strict=True)):
                out[label] = reps[row, 1:len(seq) + 1]
    return out


def timed(fn) -> tuple[float, dict[str, np.ndarray]]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--layers", type=int, nargs="+", default=[4, 6])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs per method")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    items = read_sequences(SPROT, args.n)
    residues = sum(len(s) for _, s in items)
    with tempfile.TemporaryDirectory() as tmp:
        model, _ = make_random_esm2(num_layers=6, embed_dim=320, attention_heads=20, seed=0)
        path = save_esm2_checkpoint(model, Path(tmp) / "random_esm2_t6_320.pt")
        plm = load_esm(str(path), device=args.device, dtype=args.dtype)

    methods = {
        "ours": lambda layer: dict(embed_sequences(plm, items, layer, args.max_tokens)),
        "bare-1": lambda layer: bare(plm, items, layer, 1),
        "bare-8": lambda layer: bare(plm, items, layer, 8),
    }
    bare(plm, items[:8], 6, 8)  # warm-up (allocator, kernels)
    report = {"device": str(plm.device), "dtype": str(plm.dtype).removeprefix("torch."),
              "threads": torch.get_num_threads(), "n_proteins": len(items), "n_residues": residues,
              "max_tokens": args.max_tokens, "layers": {}}
    for layer in args.layers:
        best, outputs = dict.fromkeys(methods, float("inf")), {}
        for _ in range(args.repeats):  # round-robin, so load from other processes hits every method alike
            for name, fn in methods.items():
                seconds, outputs[name] = timed(lambda fn=fn, layer=layer: fn(layer))
                best[name] = min(best[name], seconds)
        rates = {name: residues / seconds for name, seconds in best.items()}
        diff = max(float(np.abs(outputs["ours"][acc] - outputs[other][acc]).max())
                   for other in ("bare-1", "bare-8") for acc, _ in items)
        report["layers"][layer] = {
            "residues_per_s": {k: round(v) for k, v in rates.items()},
            "ours_vs_bare_1": round(rates["ours"] / rates["bare-1"], 2),
            "ours_vs_bare_8": round(rates["ours"] / rates["bare-8"], 2),
            "max_abs_diff": diff,
        }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"random ESM-2 6x320 on {report['device']} ({report['dtype']}, {report['threads']} threads), "
          f"{len(items)} Swiss-Prot proteins, {residues:,} residues, max_tokens {args.max_tokens}")
    for layer, row in report["layers"].items():
        r = row["residues_per_s"]
        print(f"layer {layer}: ours {r['ours']:,} res/s | bare-1 {r['bare-1']:,} | bare-8 {r['bare-8']:,} | "
              f"ours/bare-1 {row['ours_vs_bare_1']}x  ours/bare-8 {row['ours_vs_bare_8']}x  "
              f"max|diff| {row['max_abs_diff']:.1e}")


if __name__ == "__main__":
    main()
