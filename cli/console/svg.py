"""Charts drawn on the server as inline SVG: no chart library, no script, nothing to
fetch, and the page's content-security policy stays strict. Colours come from classes
in console.css (the policy forbids inline styles)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape

from markupsafe import Markup


def gauge(fraction: float, label: str, *, width: int = 240) -> Markup:
    """A horizontal bar filled to ``fraction`` (0..1), warning colour from 80%."""
    used = min(max(fraction, 0.0), 1.0)
    level = "gauge-high" if used >= 0.8 else "gauge-fill"
    return Markup(
        f'<svg class="gauge" width="{width}" height="22" role="img" aria-label="{escape(label)}">'
        f'<rect class="gauge-track" x="0" y="4" width="{width}" height="14" rx="7"/>'
        f'<rect class="{level}" x="0" y="4" width="{used * width:.1f}" height="14" rx="7"/>'
        f"<title>{escape(label)}</title></svg>"
    )


def line_chart(
    series: dict[str, Sequence[tuple[float, float | None]]],
    *,
    width: int = 560,
    height: int = 200,
    y_label: str = "",
    dots: Sequence[str] = (),
    x_ticks: Callable[[float], str] = lambda x: f"{x:.6g}",
) -> Markup:
    """Lines (and, for the series named in ``dots``, points) over a shared x axis; a
    ``None`` y leaves a gap. ``x_ticks`` writes the first and last x."""
    points = [(x, y) for s in series.values() for x, y in s if y is not None]
    if not points:
        return Markup('<p class="empty">nothing to chart yet</p>')
    pad = 36
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys)
    if y1 - y0 < 1e-12:
        y0, y1 = y0 * 0.95 - 1e-9, y1 * 1.05 + 1e-9
    span_y = y1 - y0

    def px(x: float) -> float:
        return pad + (x - x0) / (x1 - x0) * (width - 2 * pad)

    def py(y: float) -> float:
        return height - pad - (y - y0) / span_y * (height - 2 * pad)

    parts = [
        f'<svg class="chart" width="{width}" height="{height}" role="img" '
        f'aria-label="{escape(y_label)}">',
        f'<line class="axis" x1="{pad}" y1="{height - pad}" x2="{width - pad}" '
        f'y2="{height - pad}"/>',
        f'<line class="axis" x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}"/>',
        f'<text class="tick" x="2" y="{py(y1) + 4:.1f}">{_number(y1)}</text>',
        f'<text class="tick" x="2" y="{py(y0) + 4:.1f}">{_number(y0)}</text>',
        f'<text class="tick" x="{pad}" y="{height - pad + 16}">{escape(x_ticks(x0))}</text>',
    ]
    if max(xs) > min(xs):
        parts.append(
            f'<text class="tick" x="{width - pad}" y="{height - pad + 16}" text-anchor="end">'
            f"{escape(x_ticks(x1))}</text>"
        )
    for number, (name, values) in enumerate(series.items()):
        kind = f"series-{number % 4}"
        run: list[str] = []
        for x, y in [*values, (math.nan, None)]:
            if y is None:
                if len(run) > 1:
                    parts.append(f'<polyline class="{kind}" points="{" ".join(run)}"/>')
                run = []
                continue
            run.append(f"{px(x):.1f},{py(y):.1f}")
            if name in dots:
                parts.append(
                    f'<circle class="{kind} dot" cx="{px(x):.1f}" cy="{py(y):.1f}" r="4">'
                    f"<title>{escape(name)}: {y:.6g}</title></circle>"
                )
        legend_y = 14 + 14 * number
        parts.append(
            f'<rect class="{kind} swatch" x="{width - 150}" y="{legend_y - 9}" width="10" '
            f'height="10"/><text class="legend" x="{width - 135}" y="{legend_y}">'
            f"{escape(name)}</text>"
        )
    if y_label:
        parts.append(f'<text class="tick" x="{pad}" y="{pad - 8}">{escape(y_label)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _number(value: float) -> str:
    """An axis figure: whole thousands with separators, small values to 4 digits."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def peer_graph(
    nodes: Sequence[dict[str, object]],
    edges: Sequence[dict[str, str]],
    *,
    size: int = 420,
) -> Markup:
    """Peers on a circle; this home's agents marked; a line for each peer an agent
    knows (dashed when it thinks that peer is down)."""
    if not nodes:
        return Markup('<p class="empty">no peers known yet</p>')
    centre, radius = size / 2, size / 2 - 60
    where: dict[str, tuple[float, float]] = {}
    for i, node in enumerate(nodes):
        angle = 2 * math.pi * i / len(nodes) - math.pi / 2
        where[str(node["address"])] = (
            centre + radius * math.cos(angle),
            centre + radius * math.sin(angle),
        )
    parts = [
        f'<svg class="graph" width="{size}" height="{size}" role="img" aria-label="mesh peers">'
    ]
    for edge in edges:
        if edge["from"] in where and edge["to"] in where:
            (ax, ay), (bx, by) = where[edge["from"]], where[edge["to"]]
            kind = "edge" if edge["state"] == "up" else "edge edge-down"
            parts.append(
                f'<line class="{kind}" x1="{ax:.1f}" y1="{ay:.1f}" x2="{bx:.1f}" y2="{by:.1f}"/>'
            )
    for node in nodes:
        x, y = where[str(node["address"])]
        kind = "node-local" if node.get("local") else "node"
        if node.get("state") != "up":
            kind += " node-down"
        name = escape(str(node["name"]))
        parts.append(
            f'<circle class="{kind}" cx="{x:.1f}" cy="{y:.1f}" r="14">'
            f"<title>{name} {escape(str(node['address']))} ({escape(str(node['state']))})"
            f'</title></circle><text class="node-label" x="{x:.1f}" y="{y + 30:.1f}" '
            f'text-anchor="middle">{name}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))
