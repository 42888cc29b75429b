"""The report page of a night adaptation run: ``report.md`` and ``report.html`` beside the
adapted weights, with the held-out numbers before and after, every round's numbers and example
held-out frames drawn with the detections of the original and of the adapted detector (each one
plain pass on the frame the student sees, ADAPT.STUDENT_INPUT: raw or night-mode copy; drawn on
the night-mode copy so that the faces can be seen)."""
from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from utils.files import write_text_atomic
from utils.visualize import draw_detections

LABELS = {"holdout_agreed_low": "faces per held-out frame found by both the deployed detector "
                                "and its night-mode teacher, scores >= PSEUDO.LOW (the score "
                                "the run maximises)",
          "holdout_agreement_low": "teacher-student agreement, scores >= PSEUDO.LOW (F1)",
          "holdout_agreed": "agreed confident faces per held-out frame",
          "holdout_agreement": "teacher-student agreement (F1 of the confident sets)",
          "holdout_confident": "confident faces per held-out frame (deployed detector)",
          "holdout_teacher_confident": "confident faces per held-out frame (night-mode teacher)"}


def example_image(night_bgr: np.ndarray, before: np.ndarray, after: np.ndarray,
                  threshold: float) -> Image.Image:
    """Before (left) and after (right) on the night-mode copy of one frame."""
    rgb = np.ascontiguousarray(night_bgr[..., ::-1])
    left = draw_detections(rgb, before, threshold, color=(255, 160, 0))
    right = draw_detections(rgb, after, threshold)
    out = Image.new("RGB", (left.width * 2 + 8, left.height), (255, 255, 255))
    out.paste(left, (0, 0))
    out.paste(right, (left.width + 8, 0))
    return out


def _table(before: dict, after: dict) -> list[tuple[str, str, str]]:
    return [(LABELS.get(k, k), f"{before[k]:.3f}", f"{after.get(k, float('nan')):.3f}")
            for k in before]


def write_report(folder: Path, info: dict, before: dict, after: dict, history: Sequence[dict],
                 examples: Sequence[tuple[str, str]]) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` in ``folder``. ``info``: ordered facts (name ->
    text); ``history``: one dict per evaluated round (``step``, metrics); ``examples``: (frame
    name, image path relative to ``folder``)."""
    rows = _table(before, after)
    md = ["# Night adaptation report", ""]
    md += [f"- **{k}**: {v}" for k, v in info.items()] + ["", "## Held-out frames, before and "
                                                             "after", "",
                                                             "| number | before | after |",
                                                             "|---|---|---|"]
    md += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    keys = list(before)
    md += ["", "## Rounds", "", "| step | " + " | ".join(keys) + " |",
           "|---|" + "---|" * len(keys)]
    md += [f"| {h['step']} | " + " | ".join(f"{h.get(k, float('nan')):.3f}" for k in keys) + " |"
           for h in history]
    md += ["", "## Examples (left: before, right: after; drawn on the night-mode copy)", ""]
    md += [f"![{name}]({path})" for name, path in examples]
    md_path = write_text_atomic("\n".join(md) + "\n", folder / "report.md")
    esc = html.escape
    parts = ["<!doctype html><meta charset='utf-8'><title>Night adaptation report</title>",
             "<h1>Night adaptation report</h1><ul>"]
    parts += [f"<li><b>{esc(k)}</b>: {esc(str(v))}</li>" for k, v in info.items()]
    parts += ["</ul><h2>Held-out frames, before and after</h2><table border=1 cellpadding=4>",
              "<tr><th>number</th><th>before</th><th>after</th></tr>"]
    parts += [f"<tr><td>{esc(a)}</td><td>{b}</td><td>{c}</td></tr>" for a, b, c in rows]
    parts += ["</table><h2>Rounds</h2><table border=1 cellpadding=4><tr><th>step</th>"
              + "".join(f"<th>{esc(k)}</th>" for k in keys) + "</tr>"]
    parts += ["<tr><td>" + str(h["step"]) + "</td>" + "".join(
        f"<td>{h.get(k, float('nan')):.3f}</td>" for k in keys) + "</tr>" for h in history]
    parts += ["</table><h2>Examples</h2><p>left: before, right: after (drawn on the night-mode "
              "copy)</p>"]
    parts += [f"<p>{esc(name)}<br><img src='{esc(path)}'></p>" for name, path in examples]
    html_path = write_text_atomic("\n".join(parts) + "\n", folder / "report.html")
    return md_path, html_path
