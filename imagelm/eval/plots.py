"""Small line plots drawn with PIL (no plotting library needed): enough for study reports."""
from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

_COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127)]


def line_plot(series: dict[str, list[tuple[float, float]]], path: str | Path, title: str, xlabel: str,
              ylabel: str, size: tuple[int, int] = (640, 400)) -> Path:
    """Write a PNG with one line (and markers) per named series of (x, y) points; returns the path."""
    W, H = size
    left, right, top, bottom = 60, 150, 30, 40
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    pts = [p for s in series.values() for p in s]
    if not pts:
        raise ValueError("nothing to plot")
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    pad = (y1 - y0) * 0.05
    y0, y1 = y0 - pad, y1 + pad

    def to_px(x, y):
        return (left + (x - x0) / (x1 - x0) * (W - left - right), H - bottom - (y - y0) / (y1 - y0) * (H - top - bottom))

    d.rectangle([left, top, W - right, H - bottom], outline="black")
    for i in range(5):  # y ticks
        y = y0 + (y1 - y0) * i / 4
        _, py = to_px(x0, y)
        d.line([left - 4, py, left, py], fill="black")
        d.text((4, py - 6), f"{y:.3g}", fill="black")
    for x in sorted({p[0] for p in pts}):
        px, _ = to_px(x, y0)
        d.line([px, H - bottom, px, H - bottom + 4], fill="black")
        d.text((px - 8, H - bottom + 6), f"{x:g}", fill="black")
    d.text((left, 8), title, fill="black")
    d.text((W // 2 - 40, H - 14), xlabel, fill="black")
    d.text((4, top - 16), ylabel, fill="black")
    for i, (name, s) in enumerate(series.items()):
        color = _COLORS[i % len(_COLORS)]
        xy = [to_px(x, y) for x, y in sorted(s)]
        if len(xy) > 1:
            d.line(xy, fill=color, width=2)
        for px, py in xy:
            d.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)
        d.text((W - right + 10, top + 16 * i), name, fill=color)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
