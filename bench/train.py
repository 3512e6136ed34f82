"""Bench: achieved FLOP/s of SAE training (sae.train.train_sae) against bare torch matmuls of the same shapes.

FLOPs counted are those of the matmuls one training step performs, with B tokens, D = d_in, F = d_sae:

    encoder forward       x @ W_enc              2BDF
    decoder forward       f @ W_dec              2BDF
    decoder backward      dL/df = g @ W_dec^T    2BDF
                          dL/dW_dec = f^T @ g    2BDF
    encoder backward      dL/dW_enc = x^T @ h    2BDF   (no gradient w.r.t. the input data)
                                                 ----
                                                10BDF per step

(the "6 x params x tokens" rule would say 12BDF; the input gradient is never computed). Everything else a
step does (ReLU/top-k, losses, Adam, decoder-norm projection, dead-feature counters, Python) is overhead
that the ratio exposes. The reference runs those five matmuls back to back, as plain `torch.matmul`s, at
the same shapes. Data are random and made before timing; dead-feature AuxK is disabled so that the count
above is exact for every architecture.

    python bench/train.py [--d-in 320] [--d-sae 4096] [--batch 1024] [--steps 30] [--arch relu] [--k 32]
                          [--device auto] [--threads N]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sae.model import create_sae  # noqa: E402
from sae.train import TrainConfig, train_sae  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(batch: int, d_in: int, d_sae: int, device: torch.device, repeats: int) -> float:
    """FLOP/s of the five matmuls of one training step, run bare."""
    x = torch.randn(batch, d_in, device=device)
    w_enc = torch.randn(d_in, d_sae, device=device)
    w_dec = torch.randn(d_sae, d_in, device=device)
    f = torch.randn(batch, d_sae, device=device)
    g = torch.randn(batch, d_in, device=device)
    h = torch.randn(batch, d_sae, device=device)

    def one() -> None:
        torch.matmul(x, w_enc)
        torch.matmul(f, w_dec)
        torch.matmul(g, w_dec.T)
        torch.matmul(f.T, g)
        torch.matmul(x.T, h)

    for _ in range(3):
        one()
    sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        one()
    sync(device)
    return 10 * batch * d_in * d_sae * repeats / (time.perf_counter() - started)


def training_rate(args: argparse.Namespace, device: torch.device) -> tuple[float, float]:
    """(FLOP/s, seconds per step) of train_sae, timed after `warmup` steps."""
    torch.manual_seed(0)
    extra = {"k": args.k} if args.arch in ("topk", "batchtopk") else {}
    sae = create_sae(args.arch, args.d_in, args.d_sae, normalization="scale", **extra).to(device)
    pool = [torch.randn(args.batch, args.d_in, device=device) for _ in range(4)]
    warmup = 5
    steps = args.steps + warmup
    cfg = TrainConfig(total_tokens=steps * args.batch, batch_size=args.batch, lr=1e-4, warmup_steps=0,
                      dead_tokens=10**15, checkpoint_every=0)
    marks: dict[int, float] = {}

    def clock(step: int, total: int, metrics: dict[str, float]) -> None:
        if step in (warmup, steps):
            sync(device)
            marks[step] = time.perf_counter()

    train_sae(sae, itertools.islice(itertools.cycle(pool), steps), cfg, progress=clock)
    seconds = (marks[steps] - marks[warmup]) / args.steps
    return 10 * args.batch * args.d_in * args.d_sae / seconds, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d-in", type=int, default=320)
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=30, help="timed steps (after 5 warm-up steps)")
    parser.add_argument("--arch", default="relu", choices=["relu", "topk", "batchtopk", "jumprelu"])
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    reference = matmul_rate(args.batch, args.d_in, args.d_sae, device, repeats=max(10, args.steps))
    achieved, step_seconds = training_rate(args, device)
    result = {
        "arch": args.arch, "d_in": args.d_in, "d_sae": args.d_sae, "batch": args.batch, "device": str(device),
        "threads": torch.get_num_threads(), "step_ms": round(step_seconds * 1000, 2),
        "tokens_per_s": round(args.batch / step_seconds),
        "train_gflops": round(achieved / 1e9, 2), "matmul_gflops": round(reference / 1e9, 2),
        "ratio": round(achieved / reference, 3),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.arch} SAE d_in={args.d_in} d_sae={args.d_sae} batch={args.batch} on {device} "
          f"({result['threads']} threads)")
    print(f"  training        {result['train_gflops']:8.2f} GFLOP/s  ({result['step_ms']} ms/step, "
          f"{result['tokens_per_s']:,} tokens/s)")
    print(f"  bare matmuls    {result['matmul_gflops']:8.2f} GFLOP/s")
    print(f"  ratio           {result['ratio']:8.3f}")


if __name__ == "__main__":
    main()
