"""Bench: steering by clamping a planted SAE feature: exactness, effect size and time per sample.

A randomly initialised ESM-2 of a released shape (default the 8M one: 6 layers x 320 dims, 20 heads;
random weights, so the timing is the real model's and the biology is not) and an SAE whose feature 0
writes the direction that most raises log p(planted residues) at the SAE's layer
(tests/steer_fixtures.py). On real Swiss-Prot sequences, for clamps from the feature's current value
up to large multiples of its max:

    max |logit change|     over all positions (0 for clamp = current: the splice is exact)
    dp planted             mean change of the planted residues' probability at the clamped residues
    freq base -> steered   their frequency at the clamped residues in sampled sequences, unclamped vs clamped
    s / sample             iterative masked-LM resampling, one sweep, 10% of residues at a time

    python bench/steer.py [--shape 8M] [--layer 4] [--residues W] [--samples 4] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SWISSPROT = ROOT.parent / "shared" / "data" / "swissprot" / "sprot_sample.dat.gz"
SHAPES = {"tiny": (2, 32, 4), "8M": (6, 320, 20), "35M": (12, 480, 20)}


def main() -> None:
    import torch

    from sae.plm import LoadedPLM, make_random_esm2, resolve_device
    from sae.steer import parse_clamp
    from sae.steer_run import steer_loaded
    from tests.esm_fixtures import read_sprot_sequences
    from tests.steer_fixtures import PLANTED_FEATURE, planted_sae

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="8M")
    parser.add_argument("--layer", type=int, default=4)
    parser.add_argument("--residues", default="W", help="the planted direction raises these")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--sequences", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    layers, dim, heads = SHAPES[args.shape]
    device = resolve_device(args.device)
    model, alphabet = make_random_esm2(layers, dim, heads, seed=0)
    model = model.to(device).eval()
    plm = LoadedPLM(model=model, alphabet=alphabet, batch_converter=alphabet.get_batch_converter(),
                    name=f"random ESM-2 {args.shape}", num_layers=layers, embed_dim=dim, device=device,
                    dtype=torch.float32)
    layer = min(args.layer, layers)
    sequences = [s for _, s in read_sprot_sequences(SWISSPROT, limit=400) if 100 <= len(s) <= 300]
    train, test = sequences[:8], sequences[8:8 + args.sequences]
    sae = planted_sae(plm, layer, train, residues=args.residues, d_sae=4 * dim).to(device)
    with torch.no_grad():
        feature_max = max(float(sae.encode(_layer(plm, layer, s))[:, PLANTED_FEATURE].max()) for s in test)
    print(f"{plm.name} on {device}, layer {layer}, SAE {sae.d_sae} features, planted residues "
          f"{args.residues!r}, feature max {feature_max:.3g}, {len(test)} sequences of "
          f"{', '.join(str(len(s)) for s in test)} residues, {args.samples} samples each\n")
    print(f"{'clamp':>8} {'max |dlogit|':>13} {'dp planted':>11} {'freq base -> steered':>21} "
          f"{'s / sample':>11}")
    for clamp_text in ("current", "1x", "2x", "5x", "10x", "20x"):
        diffs, dps, fb, fs, per = [], [], [], [], []
        for i, sequence in enumerate(test):
            n = len(sequence)
            report = steer_loaded(plm, sae, layer, PLANTED_FEATURE, sequence, clamp=parse_clamp(clamp_text),
                                  feature_max=feature_max, positions=f"{n // 3}-{n // 3 + 19}",
                                  n_samples=0 if clamp_text == "current" else args.samples, seed=i)
            diffs.append(report.max_abs_logit_diff)
            rows = [e for e in report.enrichment if e.amino_acid in args.residues]
            dps.append(sum(e.delta for e in rows))
            if report.samples:
                fb.append(sum(e.freq_base or 0 for e in rows))
                fs.append(sum(e.freq_steered or 0 for e in rows))
                per.append(report.seconds_per_sample or 0.0)
        freq = f"{_mean(fb):.3f} -> {_mean(fs):.3f}" if fb else "–"
        timing = f"{_mean(per):.3f}" if per else "–"
        print(f"{clamp_text:>8} {max(diffs):>13.3g} {_mean(dps):>+11.3f} {freq:>21} {timing:>11}")
    started = time.perf_counter()
    steer_loaded(plm, sae, layer, PLANTED_FEATURE, test[0], clamp=parse_clamp("5x"), feature_max=feature_max,
                 n_samples=args.samples, seed=0)
    print(f"\nwhole-sequence clamp with {args.samples} samples on {len(test[0])} residues: "
          f"{time.perf_counter() - started:.2f} s in all")


def _layer(plm, layer, sequence):
    import torch

    from sae.steer import layer_module, tokenize

    module, pre = layer_module(plm.model, layer)
    seen = {}

    def keep(_m, args_or_in, out=None):
        seen["x"] = args_or_in[0] if pre else (out[0] if isinstance(out, tuple) else out)

    handle = module.register_forward_pre_hook(keep) if pre else module.register_forward_hook(keep)
    with torch.no_grad():
        plm.model(tokenize(plm.alphabet, sequence).to(plm.device))
    handle.remove()
    return seen["x"][1:-1, 0]


def _mean(values):
    return sum(values) / len(values) if values else 0.0


if __name__ == "__main__":
    main()
