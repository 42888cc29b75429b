"""Convert the official WIDER FACE ground truth into the project's list files (docs/DATASETS.md).

The official ``wider_face_{train,val}_bbx_gt.txt`` holds, per image, a path line
(``<event>/<name>.jpg``), a face-count line, then one line per face::

    x1 y1 w h blur expression illumination invalid occlusion pose

An image with no face has a count of 0 *followed by one line of zeros* (four such images in the
train file; the val file instead lists its four face-less images with a count of 1 and one
all-zero box, as the ``.mat`` ground truth does). The output has one line per image, in the
input's order, every box kept as given (zero-size boxes included: the loader drops them),
numbers written as integers, label 1::

    ./dataset/WiderFace/WIDER_val/images/<event>/<name>.jpg N x y w h 1 ...

A count of 0 becomes ``<path> 0``, a zero box ``... 1 0 0 0 0 1``: this reproduces both HLA-Face
list files exactly.

Usage, from the repository root::

    python tools/prepare_wider.py --gt wider_face_val_bbx_gt.txt --out dataset/wider_face_val.txt
    python tools/prepare_wider.py --wider-root ./dataset/WiderFace     # both splits
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path


logger = logging.getLogger("prepare_wider")

DEFAULT_PREFIX = "./dataset/WiderFace/WIDER_{split}/images"
SPLITS = ("train", "val")


class GroundTruthError(ValueError):
    """A malformed official ground-truth file; the message names the file and line."""


def _number(token: str) -> str:
    """Validate a numeric token and write it as the list files do (integers when integral)."""
    value = float(token)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(token)
    return str(int(value)) if value.is_integer() else repr(value)


def parse_official_gt(path: str | Path) -> list[tuple[str, list[list[str]]]]:
    """``[(image path, [[x, y, w, h], ...])]`` in file order; a count of 0 gives ``[]``."""
    path = Path(path)
    lines = path.read_text().splitlines()
    images = []
    i = 0

    def fail(number: int, message: str):
        raise GroundTruthError(f"{path}, line {number}: {message}")

    while i < len(lines):
        name = lines[i].strip()
        if not name:                          # tolerate blank lines between records
            i += 1
            continue
        if len(name.split()) != 1 or not re.search(r"\.(jpe?g|png|bmp)$", name, re.IGNORECASE):
            fail(i + 1, f"expected an image path, got {name!r}")
        if i + 1 >= len(lines):
            fail(i + 1, f"missing the face count after {name!r}")
        count_text = lines[i + 1].strip()
        if not re.fullmatch(r"\d+", count_text):
            fail(i + 2, f"expected a face count (integer >= 0), got {count_text!r}")
        count = int(count_text)
        # The official files follow a count of 0 with one line of zeros: skip it.
        n_lines = count if count > 0 else int(i + 2 < len(lines) and _is_box_line(lines[i + 2]))
        if i + 2 + n_lines > len(lines):
            fail(len(lines), f"{name!r} announces {count} faces, the file ends first")
        boxes = []
        for k in range(i + 2, i + 2 + n_lines):
            tokens = lines[k].split()
            try:
                box = [_number(t) for t in tokens[:4]]
                if len(tokens) < 4:
                    raise ValueError
            except ValueError:
                fail(k + 1, f"expected 'x1 y1 w h ...' with numbers, got {lines[k].strip()!r}")
            boxes.append(box)
        images.append((name, boxes if count > 0 else []))
        i += 2 + n_lines
    return images


def _is_box_line(line: str) -> bool:
    tokens = line.split()
    try:
        [float(t) for t in tokens]
    except ValueError:
        return False
    return len(tokens) >= 4


def format_list(images, prefix: str) -> list[str]:
    """List-file lines (no newline) for ``parse_official_gt``'s output."""
    prefix = prefix.rstrip("/")
    out = []
    for name, boxes in images:
        fields = [f"{prefix}/{name}", str(len(boxes))]
        for box in boxes:
            fields.extend(box + ["1"])
        out.append(" ".join(fields))
    return out


def convert(gt: str | Path, out: str | Path, prefix: str) -> tuple[int, int]:
    """Convert one official file; returns (images, boxes) written."""
    images = parse_official_gt(gt)
    lines = format_list(images, prefix)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(line + "\n" for line in lines))
    n_boxes = sum(int(line.split()[1]) for line in lines)
    logger.info("%s -> %s: %d images, %d boxes", gt, out, len(lines), n_boxes)
    return len(lines), n_boxes


def _split_of(gt: Path) -> str | None:
    for split in SPLITS:
        if f"_{split}_" in gt.name or gt.name.startswith(f"{split}_"):
            return split
    return None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--gt", help="an official wider_face_{train,val}_bbx_gt.txt")
    src.add_argument("--wider-root", help="folder holding wider_face_split/: converts train and "
                                          "val into --out-dir")
    p.add_argument("--out", help="output list file (with --gt)")
    p.add_argument("--out-dir", default="./dataset",
                   help="output folder of wider_face_{train,val}.txt (with --wider-root)")
    p.add_argument("--prefix", default=None,
                   help="image path prefix; '{split}' is replaced by train/val. Default: "
                        f"{DEFAULT_PREFIX} with --gt, <wider-root>/WIDER_{{split}}/images with "
                        "--wider-root")
    return p


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    jobs = []
    if args.gt:
        if not args.out:
            parser.error("--gt needs --out")
        gt = Path(args.gt)
        split = _split_of(gt)
        prefix = args.prefix or DEFAULT_PREFIX
        if "{split}" in prefix and split is None:
            parser.error(f"cannot tell train from val in {gt.name}; give --prefix")
        jobs.append((gt, Path(args.out), prefix.replace("{split}", split or "")))
    else:
        root = Path(args.wider_root)
        prefix = args.prefix or args.wider_root.rstrip("/") + "/WIDER_{split}/images"
        for split in SPLITS:
            jobs.append((root / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt",
                         Path(args.out_dir) / f"wider_face_{split}.txt",
                         prefix.replace("{split}", split)))
    for gt, out, prefix in jobs:
        if not gt.is_file():
            parser.error(f"ground-truth file {gt} does not exist")
        try:
            convert(gt, out, prefix)
        except GroundTruthError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
