"""Drawing detections for a quick look (demo, tools/detect_image.py)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw


# eyes, nose, mouth corners
LANDMARK_COLORS = [(255, 0, 0), (0, 0, 255), (0, 255, 255), (255, 0, 255), (255, 255, 0)]


def draw_detections(rgb: np.ndarray, dets: np.ndarray, threshold: float = 0.5,
                    gt: np.ndarray | None = None, color=(0, 255, 0),
                    gt_color=(255, 64, 64)) -> Image.Image:
    """Boxes (x1, y1, x2, y2, score[, 5 landmarks as x y pairs]) above ``threshold`` with their
    scores and landmark dots; optional ground-truth corners (x1, y1, x2, y2) in another
    colour."""
    img = Image.fromarray(np.ascontiguousarray(rgb))
    draw = ImageDraw.Draw(img)
    for box in (gt if gt is not None else []):
        draw.rectangle([float(v) for v in box[:4]], outline=gt_color, width=1)
    for row in dets:
        x1, y1, x2, y2, score = (float(v) for v in row[:5])
        if score < threshold:
            continue
        draw.rectangle([x1, y1, x2, y2], outline=color, width=2)
        draw.text((x1 + 2, y1 + 1), f"{score:.2f}", fill=color)
        r = max(1.5, (x2 - x1) / 40)
        for k, (x, y) in enumerate(np.asarray(row[5:], dtype=float).reshape(-1, 2)):
            fill = LANDMARK_COLORS[k % len(LANDMARK_COLORS)]
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    return img


def grid(images: Sequence[Image.Image], columns: int = 2, cell: int = 480,
         titles: Sequence[str] | None = None) -> Image.Image:
    """Tile images (each fitted into a cell x cell*3/4 box) into one picture."""
    cell_h = cell * 3 // 4
    rows = (len(images) + columns - 1) // columns
    canvas = Image.new("RGB", (columns * cell, rows * (cell_h + 16)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, im in enumerate(images):
        im = im.copy()
        im.thumbnail((cell, cell_h))
        x, y = (i % columns) * cell, (i // columns) * (cell_h + 16)
        canvas.paste(im, (x, y + 16))
        if titles:
            draw.text((x + 4, y + 2), titles[i], fill=(0, 0, 0))
    return canvas
