"""Bench: `plmlabel serve` under 50 concurrent requests on loopback.

Builds the serve tests' live workspace (tests/serve_fixtures.py: real Swiss-Prot proteins, an activation
index, labels, suggestions) with a randomly initialised ESM-2 of a released shape (default the 8M one:
6 layers x 320 dims; random weights, so the timing is the real model's), starts the real command
(`plmlabel serve`, uvicorn) in a subprocess on a free port, loads the model with one paste, then sends
50 requests at once (bounded: each has a 120 s timeout, the whole burst 600 s) of:

    feature page      GET /sae/<id>/features/<n>, cycling over the labeled features
    paste 500 aa      POST /sae/<id>/analyze, 50 distinct 500-residue Swiss-Prot sequences (no cache hit)

and prints p50/p95/max latency, the burst's wall time and requests/s; then one request alone for scale.

    python bench/serve.py [--shape tiny|8M|35M] [--d-sae 1024] [--requests 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SWISSPROT_DIR = ROOT.parent / "shared" / "data" / "swissprot"
SHAPES = {"tiny": (2, 32, 4), "8M": (6, 320, 20), "35M": (12, 480, 20)}
BURST_TIMEOUT_S = 600


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def burst(http, requests) -> tuple[list[float], float, list[int]]:
    async def one(method, url, data):
        started = time.perf_counter()
        response = await http.request(method, url, data=data)
        return time.perf_counter() - started, response.status_code

    started = time.perf_counter()
    results = await asyncio.wait_for(asyncio.gather(*(one(*r) for r in requests)), BURST_TIMEOUT_S)
    return [r[0] for r in results], time.perf_counter() - started, [r[1] for r in results]


def report(name: str, latencies: list[float], wall: float, statuses: list[int]) -> None:
    ok = sum(1 for s in statuses if s == 200)
    print(f"{name:<16} n={len(latencies)} ok={ok}  p50 {statistics.median(latencies) * 1000:8.1f} ms  "
          f"p95 {percentile(latencies, 0.95) * 1000:8.1f} ms  max {max(latencies) * 1000:8.1f} ms  "
          f"wall {wall:6.2f} s  {len(latencies) / wall:6.1f} req/s")


async def run(base: str, sae_id: str, features: list[int], sequences: list[str], n: int) -> None:
    import httpx

    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as http:
        pages = [("GET", f"/sae/{sae_id}/features/{features[i % len(features)]}", None) for i in range(n)]
        pastes = [("POST", f"/sae/{sae_id}/analyze", {"text": sequences[i % len(sequences)]})
                  for i in range(n)]
        await burst(http, pages[:4])  # warm the connections
        report("feature page", *await burst(http, pages))
        report("paste 500 aa", *await burst(http, pastes))
        one_page = await burst(http, pages[:1])
        one_paste = await burst(http, [("POST", f"/sae/{sae_id}/analyze", {"text": sequences[-1][::-1]})])
        print(f"alone: feature page {one_page[0][0] * 1000:.1f} ms, "
              f"paste 500 aa {one_paste[0][0] * 1000:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="8M")
    parser.add_argument("--d-sae", type=int, default=1024)
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()

    import httpx

    from tests.esm_fixtures import read_sprot_sequences
    from tests.serve_fixtures import LABELS, SAE_ID, build_live_workspace

    layers, dims, heads = SHAPES[args.shape]
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        ws = build_live_workspace(Path(folder) / "ws", SWISSPROT_DIR, d_sae=args.d_sae, num_layers=layers,
                                  embed_dim=dims, attention_heads=heads)
        print(f"workspace: ESM-2 shape {args.shape} ({layers} layers x {dims}), SAE {args.d_sae} features, "
              f"built in {time.perf_counter() - started:.1f} s")
        long = [s for _, s in read_sprot_sequences(SWISSPROT_DIR / "sprot_sample.dat.gz", limit=600)
                if len(s) >= 500]
        sequences = [s[:500] for s in long[:args.requests]]
        port = free_port()
        plmlabel = Path(sys.executable).with_name("plmlabel")
        server = subprocess.Popen([str(plmlabel), "serve", "--port", str(port), "-w", str(ws.root)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit(f"serve did not start: {server.stderr.read().decode()[-2000:]}")
                time.sleep(0.2)
            started = time.perf_counter()
            httpx.post(f"{base}/sae/{SAE_ID}/analyze", data={"text": sequences[0][::-1]}, timeout=300)
            print(f"first paste (loads ESM-2 and the SAE): {time.perf_counter() - started:.2f} s")
            asyncio.run(run(base, SAE_ID, sorted(LABELS), sequences, args.requests))
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
