"""One example sequence as aligned monospace lines: a position ruler, the residues (firing ones shaded
by activation), and Swiss-Prot annotation tracks under them (domains, regions, sites, secondary
structure, plus `plmlabel suggest` rows), wrapped every ROW residues.

Alignment is by character cell: every line has a fixed-width gutter (the track name) and then exactly
one cell per residue, so only ASCII is written into cells (an annotation's name is shown inside its
bar only as far as it is printable ASCII and fits; the full text is the bar's tooltip).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass

from storage.export import ExportAnnotation, ExportExample
from storage.suggestions import Suggestion
from storage.viewer_common import esc

ROW = 60  # residues per line
GUTTER = 10  # characters of track name before each line
MAX_SHOWN = 420  # longer sequences are shown as a window of WINDOW residues around the peak
WINDOW = 300

# Track name -> (css class, Swiss-Prot feature types). Types not listed (Chain, variants, conflicts,
# mutagenesis ...) are not drawn.
TRACKS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Domains", "dom", ("Domain", "Repeat", "Zinc finger", "DNA binding")),
    ("Regions", "reg", ("Region", "Motif", "Compositional bias", "Coiled coil", "Topological domain",
                        "Transmembrane", "Intramembrane", "Signal", "Transit peptide", "Propeptide",
                        "Peptide")),
    ("Sites", "site", ("Active site", "Binding site", "Site", "Modified residue", "Glycosylation",
                       "Lipidation", "Disulfide bond", "Cross-link", "Non-standard residue")),
    ("2° struct", "ss", ("Helix", "Beta strand", "Turn")),
)
_SITE_GLYPH = {"Active site": "A", "Binding site": "B", "Site": "S", "Modified residue": "M",
               "Glycosylation": "G", "Lipidation": "L", "Disulfide bond": "C", "Cross-link": "X",
               "Non-standard residue": "U"}
_SS_GLYPH = {"Helix": "=", "Beta strand": ">", "Turn": "^"}
_SS_CLASS = {"Helix": "h", "Beta strand": "e", "Turn": "t"}  # drawn without tooltips: pages stay small


@dataclass(frozen=True)
class Bar:
    """One drawn interval of a track (1-based inclusive), its css class, tooltip and inline text."""

    start: int
    end: int
    css: str
    tip: str
    text: str


def _printable(text: str | None) -> str:
    return "".join(c if " " <= c <= "~" else " " for c in (text or ""))


def _annotation_bars(annotations: list[ExportAnnotation], types: tuple[str, ...], css: str,
                     length: int) -> list[Bar]:
    bars = []
    for a in annotations:
        if a.type not in types or a.start is None or a.end is None:
            continue
        start, end = max(1, a.start), min(length, a.end)
        where = f"{a.start}" if a.start == a.end else f"{a.start}-{a.end}"
        tip = f"{a.type} {where}" + (f": {a.description}" if a.description else "")
        if a.type == "Disulfide bond":  # two cysteines, not the span between them
            bars += [Bar(p, p, css, tip, "C") for p in (start, end) if 1 <= p <= length]
        elif css == "site":
            bars.append(Bar(start, end, css, tip, _SITE_GLYPH.get(a.type, "*") * (end - start + 1)))
        elif css == "ss":
            bars.append(Bar(start, end, _SS_CLASS[a.type], tip, _SS_GLYPH[a.type] * (end - start + 1)))
        elif start <= end:
            bars.append(Bar(start, end, css, tip, _printable(a.description or a.type)))
    return bars


def _suggestion_bars(suggestions: list[Suggestion], length: int) -> list[Bar]:
    bars = []
    for s in suggestions:
        ranges = s.residues or ((1, length),)
        f1 = "–" if s.evidence.f1 is None else f"{s.evidence.f1:.2f}"
        tip = f"suggested {s.concept} (feature {s.feature}, F1 {f1}, rank score {s.rank_score:.3f})"
        for start, end in ranges:
            start, end = max(1, start), min(length, end)
            if start <= end:
                bars.append(Bar(start, end, "sug", tip, _printable(s.concept)))
    return bars


def _lanes(bars: list[Bar]) -> list[list[Bar]]:
    """Greedy interval packing: each bar in the first lane where it does not overlap."""
    lanes: list[list[Bar]] = []
    for bar in sorted(bars, key=lambda b: (b.start, -b.end)):
        for lane in lanes:
            if lane[-1].end < bar.start:
                lane.append(bar)
                break
        else:
            lanes.append([bar])
    return lanes


def _gutter(name: str) -> str:
    return esc(name[: GUTTER - 1].ljust(GUTTER))


def _lane_line(lane: list[Bar], lo: int, hi: int) -> str:
    """Cells lo..hi of one lane: blanks, and each bar's text (clipped/padded to its cells)."""
    out, pos = [], lo
    for bar in lane:
        s, e = max(bar.start, lo), min(bar.end, hi)
        if s > e:
            continue
        if s > pos:
            out.append(" " * (s - pos))
        offset = s - bar.start  # a bar wrapped from the line above continues its text
        cells = (bar.text[offset:offset + e - s + 1] if len(bar.text) > offset else "").ljust(e - s + 1)
        if bar.css in ("h", "e", "t"):
            out.append(f"<i class=\"{bar.css}\">{esc(cells)}</i>")
        else:
            out.append(f"<span class=\"{bar.css}\" title=\"{esc(bar.tip)}\">{esc(cells)}</span>")
        pos = e + 1
    return "".join(out)


def _ruler(lo: int, hi: int) -> str:
    cells = []
    for p in range(lo, hi + 1, 10):
        width = min(10, hi - p + 1)
        label = str(p) if len(str(p)) < width or width == 10 else ""  # no cut-off numbers at the end
        cells.append(label.ljust(width))
    return "".join(cells)


def _residues(sequence: str, activations: list[float], firing: list[int], lo: int, hi: int,
              scale: float) -> str:
    """Residues lo..hi; the firing ones (1-based positions in `firing`, ascending) shaded in tenths."""
    parts, at = [], lo
    for position in firing[bisect_left(firing, lo):bisect_right(firing, hi)]:
        if position > at:
            parts.append(esc(sequence[at - 1:position - 1]))
        residue, value = esc(sequence[position - 1]), activations[position - 1]
        level = max(1, min(10, int(10 * value / scale + 0.999))) if scale > 0 else 10
        parts.append(f"<b class=\"l{level}\" title=\"{residue}{position}: {value:.3g}\">{residue}</b>")
        at = position + 1
    if at <= hi:
        parts.append(esc(sequence[at - 1:hi]))
    return "".join(parts)


def shown_range(example: ExportExample) -> tuple[int, int]:
    """The 1-based residues drawn: all of a short sequence, a window around the peak of a long one."""
    length = len(example.sequence)
    if length <= MAX_SHOWN:
        return 1, length
    peak = max(range(len(example.activations)), key=example.activations.__getitem__, default=0) + 1
    lo = max(1, min(peak - WINDOW // 2, length - WINDOW + 1))
    return lo, min(length, lo + WINDOW - 1)


def _track_rows(example: ExportExample, lo: int, hi: int) -> list[str]:
    """Per line of ROW residues from lo to hi: the ruler and the annotation lanes under the residues."""
    length = len(example.sequence)
    tracks = [(name, _lanes(_annotation_bars(example.annotations, types, css, length)))
              for name, css, types in TRACKS]
    tracks.append(("Suggested", _lanes(_suggestion_bars(example.suggestions, length))))
    tracks = [(name, lanes) for name, lanes in tracks if lanes]
    rows = []
    for row_lo in range(lo, hi + 1, ROW):
        row_hi = min(hi, row_lo + ROW - 1)
        lines = []
        for name, lanes in tracks:
            named = False
            for lane in lanes:
                body = _lane_line(lane, row_lo, row_hi)
                if body:
                    lines.append(f"<div class=\"lane\">{_gutter('' if named else name)}{body}</div>")
                    named = True
        rows.append("".join(lines))
    return rows


TrackCache = dict[tuple, list[str]]
_CACHE_LIMIT = 4096


def sequence_tracks_html(example: ExportExample, scale: float, cache: TrackCache | None = None) -> str:
    """The ruler, residues and tracks of one example, as <div class="tracks"> of aligned lines.

    The annotation lanes depend only on the protein (and its suggestions), not on the feature: a writer
    of many pages passes a `cache` dict so each protein's lanes are laid out once.
    """
    length = len(example.sequence)
    lo, hi = shown_range(example)
    key = (example.accession, length, lo, hi, len(example.annotations),
           tuple((s.feature, s.concept, s.residues) for s in example.suggestions))
    rows = cache.get(key) if cache is not None else None
    if rows is None:
        rows = _track_rows(example, lo, hi)
        if cache is not None:
            if len(cache) >= _CACHE_LIMIT:
                cache.clear()
            cache[key] = rows
    firing = [i + 1 for i, v in enumerate(example.activations) if v > 0]
    lines = []
    for row_lo, lanes in zip(range(lo, hi + 1, ROW), rows, strict=True):
        row_hi = min(hi, row_lo + ROW - 1)
        lines.append(f"<div class=\"ruler\">{' ' * GUTTER}{_ruler(row_lo, row_hi)}</div>")
        lines.append(f"<div class=\"res\">{_gutter('')}"
                     f"{_residues(example.sequence, example.activations, firing, row_lo, row_hi, scale)}"
                     "</div>")
        lines.append(lanes)
        lines.append("<div class=\"gap\"></div>")
    note = "" if (lo, hi) == (1, length) else (
        f"<p class=\"muted\">Residues {lo}-{hi} of {length}, around the peak.</p>")
    return f"{note}<div class=\"tracks\">{''.join(lines)}</div>"
