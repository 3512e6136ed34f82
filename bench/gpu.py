"""Bench (GPU): ESM-2 650M-shaped random weights in bf16, tokens/s for `embed` and index pass 1, against
the GPU's own bf16 matmul rate measured in the same run.

    python bench/gpu.py                   # on a machine with a CUDA GPU (a CUDA build of torch)
    python bench/gpu.py --tiny            # a tiny size anywhere (CPU too): checks the script runs

What it runs: (1) square bf16 matmuls (8,192 x 8,192) -> the dense bf16 FLOP/s this GPU reaches;
(2) `sae.plm.embed_sequences` (what `embed` runs) with a randomly initialised ESM-2 of the 650M shape
(33 layers x 1,280, 20 heads; compute does not depend on the weights' values) over proteins with
Swiss-Prot's lengths (the shared sample when present, else 361 residues each); (3) index pass 1 as
`index --from-model` runs it (sae/stream.py `embed_block` + sae/index_build.py `iter_maxima`) with a
random TopK SAE 1,280 -> 10,240 (k = 64) in bf16. Each figure: tokens/s, the FLOP/s that implies
(2 x parameters per token for the layers run + attention, + 2 x d x d_sae for the SAE) and its
ratio to the measured matmul rate. Without a GPU and without --tiny it refuses (exit 2).
"""

from __future__ import annotations

import argparse
import gzip
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPROT = ROOT.parent / "shared" / "data" / "swissprot" / "sprot_sample.dat.gz"
FULL = {"layers": 33, "dim": 1280, "heads": 20, "layer": 24, "d_sae": 10_240, "k": 64, "matmul": 8192,
        "proteins": 2000, "max_tokens": 65_536}
TINY = {"layers": 2, "dim": 64, "heads": 4, "layer": 2, "d_sae": 512, "k": 16, "matmul": 512,
        "proteins": 40, "max_tokens": 4096}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul_rate(n: int, device: str, dtype: torch.dtype, seconds: float = 3.0) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync()
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(10):
            a @ b
        sync()
        count += 10
    return 2 * n**3 * count / (time.perf_counter() - started)


def lengths(n: int) -> list[int]:
    """Swiss-Prot protein lengths (capped at 1,022) from the shared sample, else 361 each."""
    found: list[int] = []
    if SPROT.exists():
        with gzip.open(SPROT, "rt") as handle:
            for line in handle:
                if line.startswith("SQ   "):
                    found.append(min(1022, int(line.split()[2])))
                    if len(found) == n:
                        break
    return (found * (n // max(len(found), 1) + 1))[:n] if found else [361] * n


def flops_per_token(size: dict, layers: int, mean_length: float, with_sae: bool) -> float:
    d = size["dim"]
    per_layer = 2 * (12 * d * d) + 4 * mean_length * d  # QKV/out/FFN weights + attention scores/values
    return layers * per_layer + (2 * d * size["d_sae"] if with_sae else 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a tiny model and SAE (runs on CPU too)")
    parser.add_argument("--proteins", type=int, default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.tiny:
        print("bench/gpu.py: no CUDA GPU here (torch.cuda.is_available() is False); run it on a machine "
              "with a GPU and a CUDA build of torch, or pass --tiny to check it on CPU.", file=sys.stderr)
        sys.exit(2)
    size = TINY if args.tiny else FULL
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    n = args.proteins or size["proteins"]

    from sae.activations import sae_encoder
    from sae.index_build import iter_maxima
    from sae.model import create_sae
    from sae.plm import LoadedPLM, embed_sequences, make_random_esm2
    from sae.stream import embed_block

    rate = matmul_rate(size["matmul"], device, dtype)
    model, alphabet = make_random_esm2(size["layers"], size["dim"], size["heads"], seed=0)
    model = model.to(device=device, dtype=dtype)
    plm = LoadedPLM(model=model, alphabet=alphabet, batch_converter=alphabet.get_batch_converter(),
                    name="random", num_layers=size["layers"], embed_dim=size["dim"],
                    device=torch.device(device), dtype=dtype)
    rng = np.random.default_rng(0)
    residues = "ACDEFGHIKLMNPQRSTVWY"
    items = [(f"P{i}", "".join(rng.choice(list(residues), length))) for i, length in enumerate(lengths(n))]
    tokens = sum(len(s) for _, s in items)
    mean_length = tokens / len(items)
    embed_sequences(plm, items[:8], size["layer"], size["max_tokens"])  # warm-up
    sync()
    started = time.perf_counter()
    for _ in embed_sequences(plm, items, size["layer"], size["max_tokens"]):
        pass
    sync()
    embed_rate = tokens / (time.perf_counter() - started)

    torch.manual_seed(0)
    sae = create_sae("topk", size["dim"], size["d_sae"], k=size["k"]).to(device=device, dtype=dtype)
    encode = sae_encoder(sae)
    sync()
    started = time.perf_counter()
    block_residues = 52_428
    block: list[tuple[str, str]] = []
    for item in items + [("", "")]:
        if item[0] and sum(len(s) for _, s in block) + len(item[1]) <= block_residues:
            block.append(item)
            continue
        for _ in iter_maxima(embed_block(plm, block, size["layer"], size["max_tokens"]), encode, sae.d_sae):
            pass
        block = [item] if item[0] else []
    sync()
    index_rate = tokens / (time.perf_counter() - started)

    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (--tiny)"
    shape = f"{size['layers']} x {size['dim']}, layer {size['layer']}"
    print(f"{name}, {str(dtype).removeprefix('torch.')}: {len(items):,} proteins, {tokens:,} tokens; "
          f"ESM-2 {shape}; TopK SAE {size['dim']} -> {size['d_sae']:,}")
    print(f"matmul {size['matmul']}^3: {rate / 1e12:,.3f} TFLOP/s")
    for label, value, with_sae in (("embed", embed_rate, False), ("index pass 1", index_rate, True)):
        achieved = value * flops_per_token(size, size["layer"], mean_length, with_sae)
        print(f"{label:<13} {value:>10,.0f} tokens/s = {achieved / 1e12:7.3f} TFLOP/s = "
              f"{achieved / rate:.2f}x the matmul rate")


if __name__ == "__main__":
    main()
