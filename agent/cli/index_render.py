"""Terminal and JSON views of one feature's examples (for `plmlabel feature show`)."""

from __future__ import annotations

from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.measure import Measurement
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from agent.cli.safe_text import clean, data_text
from sae.index import ExampleProtein, FeatureExamples
from storage.protein import ProteinFeature

LINE = 60  # residues per sequence line
CONTEXT = 20  # residues shown either side of firing residues in long proteins
FULL_UP_TO = 600  # proteins this short are shown whole
MAX_FEATURES = 12  # overlapping annotations listed per protein
SKIPPED_TYPES = frozenset({"Chain"})  # covers the whole protein: overlaps everything, says nothing

# (lowest normalised activation, style), strongest first
STYLES = ((0.75, "bold white on red"), (0.5, "bold red"), (0.25, "yellow"), (0.0, "dim yellow"))


def style_for(normalized: float) -> str:
    for floor, style in STYLES:
        if normalized > floor:
            return style
    return ""


def _location(feature: ProteinFeature) -> str:
    if feature.start == feature.end:
        return f"{feature.start}"
    return f"{feature.start}-{feature.end}"


def overlapping(example: ExampleProtein) -> list[ProteinFeature]:
    return [f for f in example.overlapping_features() if f.type not in SKIPPED_TYPES]


def _windows(length: int, positions: list[int]) -> list[tuple[int, int]]:
    """1-based inclusive windows of the sequence to print."""
    if length <= FULL_UP_TO or not positions:
        return [(1, min(length, FULL_UP_TO if positions else LINE))]
    windows: list[tuple[int, int]] = []
    for p in sorted(positions):
        start, end = max(1, p - CONTEXT), min(length, p + CONTEXT)
        if windows and start <= windows[-1][1] + 1:
            windows[-1] = (windows[-1][0], max(end, windows[-1][1]))
        else:
            windows.append((start, end))
    return windows


# Plain-text marks under firing residues, for output without colour (a pipe, a file, NO_COLOR).
MARKS = ((0.75, "#"), (0.5, "+"), (0.25, ":"), (0.0, "."))
MARK_LEGEND = "marks under the sequence: # > 0.75 of the feature's max, + > 0.5, : > 0.25, . firing"


def mark_for(normalized: float) -> str:
    for floor, mark in MARKS:
        if normalized > floor:
            return mark
    return "."


def colourless(console: Console) -> bool:
    """Whether styles will not show (not a terminal, or NO_COLOR): then marks must be in the text."""
    return console.color_system is None or console.no_color


def _sequence_text(sequence: str, strength: dict[int, float], plain: bool) -> Text:
    text = Text()
    windows = _windows(len(sequence), sorted(strength))
    if plain and strength:
        text.append(f"{'':>7} {MARK_LEGEND}\n", style="dim")
    for start, end in windows:
        if start > 1:
            text.append(f"{'':>7}... {start - 1} residues\n", style="dim")
        for line_start in range(start, end + 1, LINE):
            line_end = min(line_start + LINE - 1, end)
            text.append(f"{line_start:>7} ", style="dim")
            marks = []
            for position in range(line_start, line_end + 1):
                residue = clean(sequence[position - 1])
                value = strength.get(position)
                text.append(residue, style=style_for(value) if value is not None else "dim")
                marks.append(" " if value is None else mark_for(value))
            text.append("\n")
            if plain and any(m != " " for m in marks):
                text.append(f"{'':>7} " + "".join(marks).rstrip() + "\n")
    if windows[-1][1] < len(sequence):
        text.append(f"{'':>7}... to residue {len(sequence)}\n", style="dim")
    return text


class HighlightedSequence:
    """The sequence with each firing residue styled by its normalised activation; without colour,
    a line of marks under each sequence line says which residues fire and how strongly."""

    def __init__(self, example: ExampleProtein, feature_max: float) -> None:
        self.sequence = example.protein.sequence
        self.strength = {r.position: r.value / feature_max if feature_max > 0 else 0.0
                         for r in example.firing}

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield _sequence_text(self.sequence, self.strength, colourless(console))

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement.get(console, options, _sequence_text(self.sequence, self.strength,
                                                                colourless(console)))


def highlighted_sequence(example: ExampleProtein, feature_max: float) -> HighlightedSequence:
    return HighlightedSequence(example, feature_max)


def _example_panel(rank: int, example: ExampleProtein, feature_max: float) -> Panel:
    protein = example.protein
    title = f"#{rank} {protein.accession}"
    if protein.protein_name:
        title += f"  {protein.protein_name}"
    parts: list[RenderableType] = [
        data_text(f"{protein.organism or 'organism unknown'} · {protein.length} aa · "
             f"max {example.max_activation:.3g} ({example.normalized:.2f} of the feature's max) · "
             f"{len(example.firing)} firing residues", style="dim"),
        highlighted_sequence(example, feature_max),
    ]
    features = overlapping(example)
    if features:
        lines = Text("Swiss-Prot features at firing residues:\n", style="bold")
        for feature in features[:MAX_FEATURES]:
            detail = feature.ligand or feature.description or ""
            lines.append(clean(f"  {feature.type} {_location(feature)}" + (f"  {detail}" if detail else ""))
                         + "\n")
        if len(features) > MAX_FEATURES:
            lines.append(f"  ... {len(features) - MAX_FEATURES} more\n", style="dim")
        parts.append(lines)
    else:
        parts.append(Text("No Swiss-Prot features at the firing residues.", style="dim"))
    # a str title would be parsed as markup by Panel whatever the console says
    return Panel(Group(*parts), title=data_text(title), title_align="left", expand=True)


def render_feature(examples: FeatureExamples, n_shown: int) -> list[RenderableType]:
    """Header, concepts, the example table, then the top proteins' highlighted sequences."""
    out: list[RenderableType] = [data_text(
        f"Feature {examples.feature} of SAE {examples.sae_id}: max activation {examples.max_activation:.4g}; "
        f"fires in {examples.frac_proteins:.1%} of {examples.n_indexed:,} indexed proteins and "
        f"{examples.frac_residues:.2%} of their residues.", style="bold")]
    if examples.max_activation <= 0:
        out.append(Text("It never fires on the indexed proteins (a dead feature).", style="yellow"))
    if examples.quantiles and examples.max_activation > 0:
        out.append(Text("Per-protein max deciles (non-zero): "
                        + " ".join(f"{q:.3g}" for q in examples.quantiles), style="dim"))
    if examples.top_concepts:
        concepts = Table(title="Swiss-Prot concepts (threshold chosen on valid, F1 on test)",
                         title_justify="left", pad_edge=False)
        for column in ("Concept", "Thr", "F1 valid", "F1 test"):
            concepts.add_column(column, justify="left" if column == "Concept" else "right")
        for item in examples.top_concepts:
            f1_test = item.get("f1_test")
            concepts.add_row(data_text(item.get("concept")), f"{item.get('threshold', 0):g}",
                             f"{item.get('f1_valid', 0):.3f}", "–" if f1_test is None else f"{f1_test:.3f}")
        out.append(concepts)
    table = Table(title="Examples", title_justify="left", pad_edge=False)
    columns = (("Kind", "left"), ("Accession", "left"), ("Protein", "left"), ("Organism", "left"),
               ("Max", "right"), ("Norm", "right"), ("Firing", "right"))
    for column, justify in columns:
        table.add_column(column, justify=justify, overflow="ellipsis",  # type: ignore[arg-type]
                         no_wrap=column not in ("Protein", "Organism"))
    for example in examples.examples:
        protein = example.protein
        table.add_row(example.kind, data_text(protein.accession), data_text(protein.protein_name),
                      data_text(protein.organism),
                      f"{example.max_activation:.3g}", f"{example.normalized:.2f}", str(len(example.firing)))
    out.append(table)
    out.append(Text(f"{len(examples.heldout)} held-out proteins are kept apart for scoring.", style="dim"))
    top = [e for e in examples.examples if e.kind == "top"][:n_shown]
    out.extend(_example_panel(rank, e, examples.max_activation) for rank, e in enumerate(top, start=1))
    return out


def _feature_json(feature: ProteinFeature) -> dict[str, Any]:
    return {"type": feature.type, "start": feature.start, "end": feature.end,
            "description": feature.description, "ligand": feature.ligand}


def examples_json(examples: FeatureExamples) -> dict[str, Any]:
    """The feature's statistics and examples as plain data (proteins summarised, not in full)."""

    def protein(example: ExampleProtein) -> dict[str, Any]:
        p = example.protein
        return {
            "accession": p.accession, "protein_name": p.protein_name, "organism": p.organism,
            "length": p.length, "kind": example.kind, "max_activation": example.max_activation,
            "normalized": example.normalized,
            "firing": [[r.position, r.value] for r in example.firing],
            "overlapping_features": [_feature_json(f) for f in overlapping(example)],
        }

    return {
        "sae_id": examples.sae_id, "feature": examples.feature, "max_activation": examples.max_activation,
        "frac_proteins": examples.frac_proteins, "frac_residues": examples.frac_residues,
        "n_indexed": examples.n_indexed, "quantiles": list(examples.quantiles),
        "top_concepts": list(examples.top_concepts), "index_hash": examples.index_hash,
        "examples": [protein(e) for e in examples.examples],
        "heldout": [{"accession": p.accession, "max_activation": a, "normalized": n}
                    for p, a, n in zip(examples.heldout, examples.heldout_actuals,
                                       examples.heldout_normalized, strict=True)],
    }
