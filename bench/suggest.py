"""Bench: do suggestions recover Swiss-Prot annotations that were removed before import?

Planted features on the real Swiss-Prot sample (tests/suggest_fixtures.py): feature i fires where
concept i is annotated; before import the annotation is removed from a fraction of its carriers. Some
carriers are silent (unrecoverable) and a few non-carriers fire strongly (false positives a suggestion
cannot tell apart), so neither figure is 1 by construction; "ceiling" is what a perfect detector of
firing would reach on the same data (silent carriers lost, strong false firing kept). Two independent
sets (other concepts, another seed) are run. Precision and recall are over (protein, feature) pairs.

    python bench/suggest.py [--hide 0.25] [--false-rate 0.01] [--max-length 1022]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SWISSPROT = ROOT.parent / "shared" / "data" / "swissprot"
SETS = {
    "A": (["Transmembrane", "Zinc finger", "Signal peptide", "Coiled coil", "Disulfide bond",
           "ATP binding site"], 0),
    "B (independent)": (["N-linked glycosylation", "Mitochondrial transit peptide", "Protein kinase domain",
                         "DNA-binding region", "Ca(2+) binding site", "Nuclear localization signal"], 1),
}


def run_set(name: str, concepts: list[str], seed: int, hide: float, max_length: int,
            false_rate: float) -> dict:
    from sae.suggest import store_suggestions, suggest
    from storage.workspace import Workspace
    from tests.planted import load_proteins
    from tests.suggest_fixtures import SAE_ID, build_hidden_workspace

    proteins = tuple(p for p in load_proteins(SWISSPROT) if p.length <= max_length)
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Workspace(Path(tmp) / "ws")
        workspace.init()
        started = time.perf_counter()
        truth = build_hidden_workspace(workspace, proteins, concepts, hide_fraction=hide, seed=seed,
                                       false_rate=false_rate)
        built = time.perf_counter() - started
        started = time.perf_counter()
        report = suggest(workspace, SAE_ID, features=list(range(len(concepts))), mode="f1")
        with workspace.db() as db:
            store_suggestions(db, report)
        took = time.perf_counter() - started
    print(f"\nset {name}: {len(proteins)} proteins, {hide:.0%} of carriers hidden, seed {seed} "
          f"(build + index + concepts {built:.1f} s, suggest {took:.2f} s)")
    print(f"  {'concept':<32} {'carriers':>8} {'hidden':>7} {'suggested':>9} {'correct':>7} "
          f"{'precision':>9} {'recall':>7}   ceiling P / R")
    for i, concept in enumerate(truth.concepts):
        hidden = {a for a, f in truth.hidden if f == i}
        suggested = {s.accession for s in report.suggestions if s.feature == i}
        correct = len(hidden & suggested)
        n_carriers = len(truth.carriers.get(i, ()))
        print(f"  {concept.name:<32} {n_carriers:>8} {len(hidden):>7} {len(suggested):>9} "
              f"{correct:>7} {correct / len(suggested) if suggested else 0:>9.3f} "
              f"{correct / len(hidden) if hidden else 0:>7.3f}   {_ceiling(truth.ceiling(i))}")
    figures = truth.score(report.suggestions)
    print(f"  {'all':<32} {'':>8} {figures['n_hidden']:>7} {figures['n_suggested']:>9} "
          f"{figures['n_correct']:>7} "
          f"{figures['precision']:>9.3f} {figures['recall']:>7.3f}   {_ceiling(truth.ceiling())}")
    return figures


def _ceiling(figures: dict[str, float]) -> str:
    return f"{figures['precision']:.3f} / {figures['recall']:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hide", type=float, default=0.25,
                        help="fraction of carriers whose annotation is removed")
    parser.add_argument("--max-length", type=int, default=1022)
    parser.add_argument("--false-rate", type=float, default=0.01,
                        help="chance that a non-carrier fires strongly (default 0.01)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    for name, (concepts, seed) in SETS.items():
        run_set(name, concepts, seed, args.hide, args.max_length, args.false_rate)


if __name__ == "__main__":
    main()
