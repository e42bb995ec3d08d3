"""Explanations from the target attention: which history movies drove a score.

``attribution`` is what the gateway will use for "because you watched X";
``heatmap_png`` draws the seed paper's attention visualisation (candidates x
history, darker = more weight) with Pillow, which the TensorFlow stack already
brings, so no plotting library is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def attribution(weights: np.ndarray, history: Sequence[int], top: int = 3) -> list[tuple[int, float]]:
    """History movies with the largest attention weight for one candidate, largest first.

    ``weights`` is the candidate's row of the ``attention`` output ([H], left-padded
    like the history); ``history`` the movie ids actually sent (oldest first).
    """
    h = len(weights)
    tail = list(history)[-h:]
    aligned = weights[h - len(tail):] if tail else np.zeros(0)
    order = np.argsort(-aligned, kind="stable")[:top]
    return [(int(tail[i]), float(aligned[i])) for i in order if aligned[i] > 0]


def heatmap_png(path: Path, weights: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str],
                title: str) -> Path:
    """Write a heatmap of ``weights`` [rows, cols] with labels; returns the path."""
    from PIL import Image, ImageDraw, ImageFont

    rows, cols = weights.shape
    cell, left, top, pad = 28, 260, 240, 12
    width, height = left + cols * cell + pad, top + rows * cell + pad + 24
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    draw.text((pad, pad), title, fill="black", font=font)
    peak = float(weights.max()) if weights.size and weights.max() > 0 else 1.0
    for r in range(rows):
        draw.text((pad, top + r * cell + 8), row_labels[r][:38], fill="black", font=font)
        for c in range(cols):
            v = float(weights[r, c]) / peak
            shade = int(255 * (1 - v))
            x0, y0 = left + c * cell, top + r * cell
            draw.rectangle([x0, y0, x0 + cell - 2, y0 + cell - 2], fill=(shade, shade, 255))
    label_img = Image.new("RGB", (top - 20, cell * cols), "white")
    ld = ImageDraw.Draw(label_img)
    for c in range(cols):
        ld.text((4, c * cell + 8), col_labels[c][:34], fill="black", font=font)
    rotated = label_img.rotate(90, expand=True)
    img.paste(rotated, (left, 20))
    draw.text((left, top + rows * cell + 6), "history, oldest -> newest (column); candidates (row); darker = more attention",
              fill="gray", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
