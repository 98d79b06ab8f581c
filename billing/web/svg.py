"""Charts as inline SVG, drawn on the server: no JavaScript library, nothing from a CDN.

Values are integers (minor units or counts); `label` turns one into text for the axis and the
tooltips. Every piece of text is escaped, so a label can never become markup."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from markupsafe import Markup, escape

Point = tuple[str, int]  # (x label, value)

WIDTH, HEIGHT = 640, 260
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 18, 34


def nice_ceiling(value: int) -> int:
    """The smallest 1, 2 or 5 x 10^k at or above `value` (at least 1): a round top for the axis."""
    if value <= 0:
        return 1
    magnitude = 1
    while magnitude * 10 <= value:
        magnitude *= 10
    for step in (1, 2, 5, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude  # pragma: no cover


def _frame(title: str, body: list[str], summary: str) -> Markup:
    return Markup(
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}: {escape(summary)}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(title)}</title>{''.join(body)}</svg>"
    )


def _axis(top: int, label: Callable[[int], str]) -> list[str]:
    """Four horizontal grid lines with their values on the left."""
    parts = []
    plot_h = HEIGHT - TOP - BOTTOM
    for i in range(5):
        value = top * i // 4
        y = TOP + plot_h - plot_h * i / 4
        parts.append(
            f'<line class="grid-line" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text x="{LEFT - 8}" y="{y + 4:.1f}" text-anchor="end">{escape(label(value))}</text>'
        )
    return parts


def _summary(points: Sequence[Point], label: Callable[[int], str]) -> str:
    return "; ".join(f"{x}: {label(v)}" for x, v in points) or "no data"


def bar_chart(title: str, points: Sequence[Point], label: Callable[[int], str] = str) -> Markup:
    """One bar per x label (e.g. redemptions per month)."""
    top = nice_ceiling(max((v for _, v in points), default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    body = _axis(top, label)
    n = max(1, len(points))
    slot = plot_w / n
    bar_w = min(48.0, slot * 0.62)
    for i, (x_label, value) in enumerate(points):
        h = plot_h * max(0, value) / top
        x = LEFT + slot * i + (slot - bar_w) / 2
        y = TOP + plot_h - h
        body.append(
            f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
            f'rx="4"><title>{escape(x_label)}: {escape(label(value))}</title></rect>'
            f'<text x="{x + bar_w / 2:.1f}" y="{HEIGHT - 12}" text-anchor="middle">'
            f"{escape(x_label)}</text>"
        )
        if value:
            body.append(
                f'<text class="value-label" x="{x + bar_w / 2:.1f}" y="{y - 5:.1f}" '
                f'text-anchor="middle">{escape(label(value))}</text>'
            )
    return _frame(title, body, _summary(points, label))


def line_chart(title: str, points: Sequence[Point], label: Callable[[int], str] = str) -> Markup:
    """A line with a soft area under it (e.g. MRR by month)."""
    top = nice_ceiling(max((v for _, v in points), default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    body = _axis(top, label)
    n = len(points)
    step = plot_w / max(1, n - 1) if n > 1 else 0
    coords = []
    for i, (_, value) in enumerate(points):
        x = LEFT + (step * i if n > 1 else plot_w / 2)
        y = TOP + plot_h - plot_h * max(0, value) / top
        coords.append((x, y))
    if coords:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
        base = TOP + plot_h
        body.append(
            f'<polygon class="area" points="{coords[0][0]:.1f},{base} {path} '
            f'{coords[-1][0]:.1f},{base}"/>'
            f'<polyline class="line" points="{path}"/>'
        )
    for (x, y), (x_label, value) in zip(coords, points, strict=True):
        body.append(
            f'<circle class="dot" cx="{x:.1f}" cy="{y:.1f}" r="4">'
            f"<title>{escape(x_label)}: {escape(label(value))}</title></circle>"
            f'<text x="{x:.1f}" y="{HEIGHT - 12}" text-anchor="middle">{escape(x_label)}</text>'
        )
    if coords:
        x, y = coords[-1]
        body.append(
            f'<text class="value-label" x="{min(x, WIDTH - RIGHT - 4):.1f}" y="{y - 9:.1f}" '
            f'text-anchor="end">{escape(label(points[-1][1]))}</text>'
        )
    return _frame(title, body, _summary(points, label))
