"""Inline SVG charts of a feature page: the activation histogram and predicted-against-actual scatter.

Pure functions of the exported data; every number is formatted here and every text goes through `esc`.
"""

from __future__ import annotations

import math

from storage.export import ActivationHistogram, ExportFeature
from storage.viewer_common import esc, fmt


def histogram_svg(histogram: ActivationHistogram | None, max_activation: float | None) -> str:
    """Bars of the per-protein max (normalised), the silent proteins as a separate grey bar; the
    bar heights are on a square-root scale so a few strong proteins stay visible beside many weak."""
    if histogram is None or histogram.n_proteins == 0:
        return "<p class=\"muted\">No activation index when this was exported: no histogram.</p>"
    counts = [histogram.n_silent, *histogram.counts]
    width, height, pad, gap = 420, 170, 30, 8
    n_bars = len(counts)
    bar_w = (width - 2 * pad - gap) / n_bars
    top = max(max(counts), 1)
    plot_h = height - 2 * pad

    def bar_h(count: int) -> float:
        return plot_h * math.sqrt(count / top)

    bars = []
    for i, count in enumerate(counts):
        x = pad + i * bar_w + (gap if i else 0)
        h = bar_h(count)
        if i == 0:
            what = "never fire (silent)"
            cls = "silent"
        else:
            lo, hi = histogram.edges[i - 1], histogram.edges[i]
            what = f"max in ({lo:.2f}, {hi:.2f}] of the feature's max"
            cls = "firing"
        bars.append(
            f"<rect class=\"{cls}\" x=\"{x:.1f}\" y=\"{height - pad - h:.1f}\" "
            f"width=\"{max(bar_w - 1, 1):.1f}\" height=\"{h:.1f}\">"
            f"<title>{count} protein(s): {esc(what)}</title></rect>"
        )
    axis = (
        f"<text x=\"{pad + bar_w / 2:.1f}\" y=\"{height - pad + 13}\" text-anchor=\"middle\">off</text>"
        f"<text x=\"{pad + gap + bar_w:.1f}\" y=\"{height - pad + 13}\" text-anchor=\"start\">0</text>"
        f"<text x=\"{width - pad:.1f}\" y=\"{height - pad + 13}\" text-anchor=\"end\">"
        f"{esc(fmt(max_activation, 3)) if max_activation is not None else '1'}</text>"
        f"<text x=\"{width / 2:.0f}\" y=\"{height - 4}\" text-anchor=\"middle\">per-protein max activation "
        "(grey: never fires)</text>"
        f"<text x=\"{pad - 4}\" y=\"{pad + 4}\" text-anchor=\"end\">{top}</text>"
        f"<text x=\"{pad - 4}\" y=\"{height - pad}\" text-anchor=\"end\">0</text>"
    )
    return (
        f"<svg class=\"hist\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" "
        "role=\"img\" "
        f"aria-label=\"histogram of the per-protein max activation over {histogram.n_proteins} indexed "
        f"proteins\">{axis}{''.join(bars)}</svg>"
    )


def firing_summary(feature: ExportFeature) -> list[tuple[str, str]]:
    """(name, value) pairs: how often and how strongly the feature fires."""
    hist = feature.histogram
    proteins = fmt(None if feature.frac_proteins is None else 100 * feature.frac_proteins, 1)
    if hist is not None and hist.n_proteins:
        proteins += f"% ({hist.n_proteins - hist.n_silent} of {hist.n_proteins})"
    elif feature.frac_proteins is not None:
        proteins += "%"
    residues = fmt(None if feature.frac_residues is None else 100 * feature.frac_residues, 2)
    return [
        ("proteins firing", proteins),
        ("residues firing", residues + ("%" if feature.frac_residues is not None else "")),
        ("max activation", fmt(feature.max_activation, 3)),
    ]


def scatter_svg(feature: ExportFeature) -> str:
    """Predicted (0-10) against actual (normalised 0-1) for the held-out proteins. Points that fall
    on the same spot are drawn once, larger, with their count written on them."""
    predictions = [p for p in feature.record.predictions if p.actual is not None]
    if not predictions:
        return "<p class=\"muted\">No held-out predictions stored.</p>"
    width, height, pad = 360, 260, 36
    top = max(10.0, max(p.predicted for p in predictions))
    plot_w, plot_h = width - 2 * pad, height - 2 * pad

    def x(v: float) -> float:
        return pad + plot_w * min(max(v, 0.0), 1.0)

    def y(v: float) -> float:
        return height - pad - plot_h * min(max(v / top, 0.0), 1.0)

    grid = "".join(
        f"<line x1=\"{pad}\" y1=\"{y(t):.1f}\" x2=\"{width - pad}\" y2=\"{y(t):.1f}\"/>"
        f"<text x=\"{pad - 6}\" y=\"{y(t) + 4:.1f}\" text-anchor=\"end\">{t:g}</text>"
        for t in (0, top / 2, top)
    ) + "".join(
        f"<line x1=\"{x(t):.1f}\" y1=\"{pad}\" x2=\"{x(t):.1f}\" y2=\"{height - pad}\"/>"
        f"<text x=\"{x(t):.1f}\" y=\"{height - pad + 14}\" text-anchor=\"middle\">{t:g}</text>"
        for t in (0, 0.5, 1)
    )
    spots: dict[tuple[int, int], list[str]] = {}
    for p in predictions:  # 3-pixel cells: points closer than that overlap on screen
        cell = (round(x(p.actual or 0.0) / 3), round(y(p.predicted) / 3))
        name = f"{p.accession}: predicted {p.predicted:g}, actual {p.actual or 0.0:.2f}"
        spots.setdefault(cell, []).append(name)
    dots = []
    for (cx, cy), names in sorted(spots.items()):
        n = len(names)
        r = 4 + 2.5 * math.sqrt(n - 1)
        tip = "\n".join(names[:12]) + (f"\n… and {n - 12} more" if n > 12 else "")
        count = (f"<text class=\"n\" x=\"{cx * 3}\" y=\"{cy * 3 + 3.5:.1f}\" "
                 f"text-anchor=\"middle\">{n}</text>" if n > 1 else "")
        dots.append(f"<g><title>{esc(f'{n} protein(s)' if n > 1 else '')}{chr(10) if n > 1 else ''}{esc(tip)}"
                    f"</title><circle cx=\"{cx * 3}\" cy=\"{cy * 3}\" r=\"{r:.1f}\"/>{count}</g>")
    labels = (
        f"<text x=\"{width / 2:.0f}\" y=\"{height - 6}\" text-anchor=\"middle\">"
        "actual (normalised max)</text>"
        f"<text x=\"12\" y=\"{height / 2:.0f}\" text-anchor=\"middle\" "
        f"transform=\"rotate(-90 12 {height / 2:.0f})\">predicted</text>"
    )
    overlap = sum(1 for names in spots.values() if len(names) > 1)
    note = (f"<p class=\"muted\">{len(predictions)} proteins at {len(spots)} spots; a number on a dot "
            "counts the proteins drawn there.</p>" if overlap else "")
    return (
        f"<svg class=\"scatter\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" "
        f"role=\"img\" aria-label=\"predicted against actual activation of {len(predictions)} held-out "
        f"proteins\">{grid}{labels}{''.join(dots)}</svg>{note}"
    )
