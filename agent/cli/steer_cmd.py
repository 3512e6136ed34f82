"""`plmlabel steer`: clamp one SAE feature inside ESM-2 and see which residues it pushes up."""

from __future__ import annotations

import click
from rich.table import Table
from rich.text import Text

from agent.cli._common import console, json_option, open_workspace, print_json, workspace_option
from sae.steer import parse_clamp
from sae.steer_run import SteerReport, steer

N_POSITIONS_SHOWN = 15


def _fmt(items: list[tuple[str, float]]) -> str:
    return " ".join(f"{aa}{delta:+.3f}" for aa, delta in items) or "–"


def render_steer(report: SteerReport) -> None:
    head = Text(f"Feature {report.feature} of SAE ", style="bold")
    head.append(report.sae_id or "–", style="bold cyan")
    clamp = "its current value" if report.clamp is None else f"{report.clamp:g}"
    if report.clamp is not None and report.feature_max:
        clamp += f" ({report.clamp / report.feature_max:.2g}x its max {report.feature_max:.3g})"
    head.append(f" clamped to {clamp} at {len(report.positions)} residues, layer {report.layer}, "
                f"{report.device}", style="")
    console.print(head)
    console.print(Text(f"logits against the unmodified model: max |change| {report.max_abs_logit_diff:.3g}",
                       style="dim"))
    table = Table(title=Text("Enrichment at the clamped residues (against the unclamped model)"),
                  pad_edge=False)
    for name in ("AA", "p base", "p steered", "Δp", "freq base", "freq steered", "log2 ratio"):
        table.add_column(name, justify="right")
    for row in report.enrichment:
        table.add_row(row.amino_acid, f"{row.p_base:.3f}", f"{row.p_steered:.3f}", f"{row.delta:+.3f}",
                      "–" if row.freq_base is None else f"{row.freq_base:.3f}",
                      "–" if row.freq_steered is None else f"{row.freq_steered:.3f}",
                      "–" if row.log2_ratio is None else f"{row.log2_ratio:+.2f}")
    console.print(table)
    moved = sorted(report.positions_report, key=lambda r: -r.total_variation)[:N_POSITIONS_SHOWN]
    positions = Table(title=Text(f"Positions that changed most ({len(moved)} of {len(report.sequence)})"),
                      pad_edge=False)
    for name in ("Pos", "Res", "Clamped", "Act.", "TV", "Up", "Down"):
        positions.add_column(name)
    for r in moved:
        positions.add_row(str(r.position), r.residue, "yes" if r.clamped else "", f"{r.activation:.3g}",
                          f"{r.total_variation:.3f}", _fmt(r.gains), _fmt(r.losses))
    console.print(positions)
    if report.samples:
        timing = f" ({report.seconds_per_sample:.3g} s each)" if report.seconds_per_sample else ""
        console.print(Text(f"Samples{timing}", style="bold"))
        for s in report.samples:
            console.print(Text(s), soft_wrap=True)


@click.command("steer")
@click.argument("sae_id")
@click.argument("feature", type=int)
@click.option("--sequence", default=None, help="The protein sequence to steer.")
@click.option("--accession", default=None, help="Steer this imported protein instead.")
@click.option("--clamp", "clamp_text", default="current", show_default=True,
              help="A raw value, a multiple of the feature's max (e.g. 3x), or 'current' (no change).")
@click.option("--positions", default=None, help="1-based residues to clamp, e.g. 5-12,20 (default: all).")
@click.option("--samples", "n_samples", type=int, default=0, show_default=True,
              help="Sequences to sample by iterative masked-LM resampling (with and without the clamp).")
@click.option("--sweeps", type=int, default=1, show_default=True, help="Resampling passes over the sequence.")
@click.option("--mask-fraction", type=float, default=0.1, show_default=True,
              help="Fraction of residues masked and redrawn at a time.")
@click.option("--temperature", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--model", default=None, help="ESM-2 hub name or checkpoint (default: the SAE's model).")
@click.option("--device", default=None, metavar="auto|cpu|cuda",
              help="auto = CUDA when present (default: [plm] device).")
@workspace_option
@json_option
def steer_command(sae_id: str, feature: int, sequence: str | None, accession: str | None,
                  clamp_text: str, positions: str | None, n_samples: int, sweeps: int, mask_fraction: float,
                  temperature: float, seed: int, model: str | None, device: str | None,
                  workspace: str | None, as_json: bool) -> None:
    """Clamp FEATURE of SAE_ID inside ESM-2 (reconstruction error kept) and report what it changes."""
    clamp = parse_clamp(clamp_text)
    ws = open_workspace(workspace)
    report = steer(ws, sae_id, feature, sequence=sequence, accession=accession, clamp=clamp,
                   positions=positions,
                   n_samples=n_samples, sweeps=sweeps, mask_fraction=mask_fraction, temperature=temperature,
                   seed=seed, device=device, model=model)
    if as_json:
        print_json(report.model_dump())
    else:
        render_steer(report)


COMMANDS = [steer_command]
