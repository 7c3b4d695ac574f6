"""A loss curve drawn with characters, for terminals (used by `charrnn info`)."""

from __future__ import annotations

import math


def line_plot(series: dict[str, list[tuple[float, float]]], width: int = 60, height: int = 12) -> list[str]:
    """Scatter each named series of (x, y) points onto a character grid with a y axis.

    Each series is drawn with its own mark (the first letter of its name); a legend line
    follows the x axis. Returns the lines, without trailing newlines.
    """
    points = [(x, y) for pts in series.values() for x, y in pts if math.isfinite(y)]
    if not points:
        return ["(no losses recorded)"]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if y1 - y0 < 1e-9:
        y0, y1 = y0 - 0.5, y1 + 0.5
    if x1 - x0 < 1e-9:
        x1 = x0 + 1
    grid = [[" "] * width for _ in range(height)]
    for name, pts in series.items():
        mark = name[0]
        for x, y in pts:
            if not math.isfinite(y):
                continue
            col = round((x - x0) / (x1 - x0) * (width - 1))
            row = height - 1 - round((y - y0) / (y1 - y0) * (height - 1))
            grid[row][col] = mark
    labels = [f"{y1 - (y1 - y0) * r / (height - 1):6.3f}" for r in range(height)]
    lines = [f"{labels[r]} ┤{''.join(grid[r])}" for r in range(height)]
    lines.append(" " * 7 + "└" + "─" * width)
    left, right = f"{x0:g}", f"{x1:g}"
    lines.append(" " * 8 + left + " " * max(1, width - len(left) - len(right)) + right)
    lines.append(" " * 8 + "   ".join(f"{name[0]} = {name}" for name in series))
    return lines
