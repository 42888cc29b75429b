"""One registry of face-annotation formats, each read into the same :class:`FaceRecord` list.

=============  ===========================================================================
``wider``      the project's list file (docs/DATASETS.md; what ``tools/prepare_wider.py``
               writes): one image a line, ``<path> <N> x y w h label`` x N
``retinaface`` Pytorch_Retinaface's ``label.txt``: ``# <path>`` then one face a line,
               ``x y w h`` (val/test) or ``x y w h`` + 5 x ``(lx ly flag)`` + 1 value (train)
``labelv2``    SCRFD / libfacedetection.train: ``# <path> <W> <H>`` then one face a line,
               ``x1 y1 x2 y2`` optionally followed by 5 x ``(lx ly flag)`` (or 5 x ``(lx ly)``)
``laboro``     the Laboro TV Face folder layout (``train/label.txt``, ``val/tvval_list.txt``,
               ``test/tvtest_list.txt``, each beside an ``images/`` folder)
``dlib_xml``   dlib's imglab XML (``examples/faces/training.xml``): ``<image file=...>``
               elements holding ``<box top left width height [ignore]>``, optionally with
               68 ``<part name x y>`` points a box
=============  ===========================================================================

Every reader returns boxes as float64 pixel ``x1, y1, x2, y2`` with ``x2 = x + w`` (the
convention of :func:`data.widerface.parse_list_file`; no ``- 1``), landmarks ``[n, 5, 2]``
with every coordinate of a missing point set to -1 (the marker all these formats use), and
labels (1 = face; the ``wider`` format keeps its label column). As in ``parse_list_file``, a
box with ``w <= 0`` or ``h <= 0`` is dropped (its count logged) and a non-finite number is an
error. Unlike the training loader, the readers keep an image left without a box, so the record
count is the image count of the file: ``[r for r in records if len(r.boxes)]`` is what
``parse_list_file(path, root)`` returns.

Files are UTF-8 (a BOM is stripped), with LF, CRLF or CR line ends; blank lines and trailing
blanks are ignored. A malformed line raises :class:`AnnotationError` whose message starts with
``<file>:<line>:`` and says what was expected.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from utils.files import UTF8_BOM, NotUtf8Error, read_utf8_lines

logger = logging.getLogger(__name__)

NUM_LANDMARKS = 5
MISSING = -1.0                      # the formats' marker of an absent landmark coordinate
RETINAFACE_WIDTHS = (4, 20)         # numbers per face line: box only / box + 15 + 1
LABELV2_WIDTHS = (4, 14, 19)        # box only / box + 5 (x, y) / box + 5 (x, y, flag)
LABORO_LISTS = {"train": None, "val": "tvval_list.txt", "test": "tvtest_list.txt"}


class AnnotationError(ValueError):
    """A malformed annotation file; the message names ``file:line`` (or the file/folder)."""

    def __init__(self, path, line: int | None, message: str):
        self.path = str(path)
        self.line = line
        super().__init__(f"{path}:{line}: {message}" if line else f"{path}: {message}")


@dataclass(eq=False)
class FaceRecord:
    """One image: ``boxes`` ``[n, 4]`` float64 pixel x1, y1, x2, y2 (x2 = x + w),
    ``landmarks`` ``[n, 5, 2]`` float64 pixels (-1 where absent), ``labels`` ``[n]`` int64,
    ``size`` ``(W, H)`` when the file states it (``labelv2``, ``dlib_xml``), else None."""
    path: str
    boxes: np.ndarray
    landmarks: np.ndarray
    labels: np.ndarray
    size: tuple[int, int] | None = None


def has_landmarks(record: FaceRecord) -> np.ndarray:
    """``[n]`` bool: the faces with at least one landmark coordinate that is not -1."""
    return ~(record.landmarks == MISSING).all(axis=(1, 2))


# ---- reading helpers ---------------------------------------------------------------------------

def _read_lines(path: Path) -> list[tuple[int, str]]:
    """``(1-based line number, stripped text)`` of the non-blank lines of a UTF-8 file."""
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist")
    try:
        lines = read_utf8_lines(path)
    except NotUtf8Error as exc:
        raise AnnotationError(path, exc.line, f"byte 0x{exc.byte:02x} at column {exc.column} is "
                              "not UTF-8 (save the file as UTF-8)") from None
    return [(number, line.strip()) for number, line in enumerate(lines, start=1) if line.strip()]


def _numbers(rows: list[list[str]], lines: list[int], path: Path, width: int) -> np.ndarray:
    """``[len(rows), width]`` float64 from token rows of equal length; one conversion for the
    whole file, and only on failure a row-by-row pass to name the bad line."""
    if not rows:
        return np.zeros((0, width))
    try:
        values = np.array(rows, dtype=np.float64)
    except ValueError:
        for row, line in zip(rows, lines):
            for token in row:
                try:
                    np.float64(token)
                except ValueError:
                    raise AnnotationError(path, line, f"{token!r} is not a number") from None
        raise
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():
        raise AnnotationError(path, lines[int(np.argmin(finite))], "non-finite number (nan/inf)")
    return values


def _records(path: Path, images: list[str], owner: np.ndarray, boxes: np.ndarray,
             landmarks: np.ndarray, labels: np.ndarray, sizes=None) -> list[FaceRecord]:
    """Drop degenerate boxes (w <= 0 or h <= 0, as ``parse_list_file``) and split the per-face
    arrays (face ``i`` belongs to image ``owner[i]``, non-decreasing) into one record a image."""
    valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    if not valid.all():
        logger.info("%s: dropped %d boxes with w <= 0 or h <= 0", path, int((~valid).sum()))
    counts = np.bincount(owner[valid], minlength=len(images))
    cuts = np.cumsum(counts)[:-1]
    parts = zip(np.split(boxes[valid], cuts), np.split(landmarks[valid], cuts),
                np.split(labels[valid], cuts))
    sizes = sizes or [None] * len(images)
    return [FaceRecord(image, b, lm, lab, size)
            for image, (b, lm, lab), size in zip(images, parts, sizes)]


def _image_base(path: Path, root) -> Path:
    """Where the block formats' image paths are relative to: ``root``, or the ``images/``
    folder beside the label file (Pytorch_Retinaface and SCRFD lay their data out so)."""
    return Path(root) if root is not None else path.parent / "images"


# ---- wider --------------------------------------------------------------------------------------

def _wider_count(tokens: list[str], path: Path, number: int) -> int:
    try:
        count = int(tokens[1]) if len(tokens) > 1 else -1
    except ValueError:
        raise AnnotationError(path, number, f"face count {tokens[1]!r} is not an integer") from None
    if count < 0:
        raise AnnotationError(path, number, "expected '<image_path> <N> x y w h label ...' "
                                            "with N >= 0")
    if len(tokens) != 2 + 5 * count:
        raise AnnotationError(path, number, f"N = {count} needs {5 * count} numbers after it "
                                            f"(x y w h label per face), found {len(tokens) - 2}")
    return count


def read_wider(path, root=None, split: str = "train") -> list[FaceRecord]:
    """The project's list file (pixel ``x y w h``, label 1 = face; docs/DATASETS.md). Relative
    image paths are joined to ``root`` (default ``.``, as ``parse_list_file``); ``split`` is
    unused (one file, one split)."""
    path = Path(path)
    base = Path("." if root is None else root)
    images, owner, rows, row_lines = [], [], [], []
    for number, line in _read_lines(path):
        tokens = line.split()
        count = _wider_count(tokens, path, number)
        owner.extend([len(images)] * count)
        images.append(str(base / tokens[0]))
        rows.extend(tokens[2 + 5 * k:7 + 5 * k] for k in range(count))
        row_lines.extend([number] * count)
    values = _numbers(rows, row_lines, path, 5)
    integral = values[:, 4] == np.round(values[:, 4])
    if not integral.all():
        raise AnnotationError(path, row_lines[int(np.argmin(integral))], "labels must be integers")
    boxes = values[:, :4].copy()
    boxes[:, 2:] += boxes[:, :2]                                # x y w h -> x1 y1 x2 y2
    landmarks = np.full((len(values), NUM_LANDMARKS, 2), MISSING)
    return _records(path, images, np.asarray(owner, dtype=np.int64), boxes, landmarks,
                    values[:, 4].astype(np.int64))


# ---- retinaface and labelv2: '#' headers, then one face a line ----------------------------------

def _parse_blocks(path: Path, widths: tuple[int, ...], parse_header: Callable, expected: str):
    """Headers ``[(name, size)]``, face rows grouped by width ``{width: (rows, lines,
    face indices)}`` and the image index of each face."""
    headers, owner = [], []
    groups = {width: ([], [], []) for width in widths}
    for number, line in _read_lines(path):
        if line.startswith("#"):
            headers.append(parse_header(line[1:].strip(), path, number))
            continue
        if not headers:
            raise AnnotationError(path, number, "face line before any '# <image path>' header")
        tokens = line.split()
        group = groups.get(len(tokens))
        if group is None:
            raise AnnotationError(path, number, f"a face line needs {expected}, "
                                                f"found {len(tokens)} values")
        group[0].append(tokens)
        group[1].append(number)
        group[2].append(len(owner))
        owner.append(len(headers) - 1)
    return headers, groups, np.asarray(owner, dtype=np.int64)


def _faces(path: Path, groups: dict, n_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes ``[F, 4]`` (the first 4 numbers, as written) and landmarks ``[F, 5, 2]`` of every
    face; the landmark numbers are ``(x, y)`` pairs (14 a line) or ``(x, y, flag)`` triples."""
    boxes = np.zeros((n_faces, 4))
    landmarks = np.full((n_faces, NUM_LANDMARKS, 2), MISSING)
    for width, (rows, lines, index) in groups.items():
        values = _numbers(rows, lines, path, width)
        boxes[index] = values[:, :4]
        if width > 4:
            step = 2 if width == 4 + 2 * NUM_LANDMARKS else 3
            points = values[:, 4:4 + step * NUM_LANDMARKS].reshape(-1, NUM_LANDMARKS, step)
            landmarks[index] = points[:, :, :2]       # absent points are written -1 -1 (-1)
    return boxes, landmarks


def _retinaface_header(text: str, path: Path, number: int):
    if not text:
        raise AnnotationError(path, number, "expected '# <image path>'")
    return text, None


def read_retinaface(path, root=None, split: str = "train") -> list[FaceRecord]:
    """Pytorch_Retinaface's ``label.txt``: ``# <image path>`` then per face ``x y w h`` (4
    numbers) or ``x y w h`` + 5 x ``(lx ly flag)`` + one more value (20 numbers; the last, a
    per-face quality value, is not kept). Absent landmarks are written -1. Image paths are
    relative to ``root`` or, by default, ``images/`` beside the label file."""
    path = Path(path)
    headers, groups, owner = _parse_blocks(path, RETINAFACE_WIDTHS, _retinaface_header,
                                           "4 or 20 numbers (x y w h [+ 5 x lx ly flag + 1 "
                                           "value])")
    boxes, landmarks = _faces(path, groups, len(owner))
    boxes[:, 2:] += boxes[:, :2]                                # x y w h -> x1 y1 x2 y2
    base = _image_base(path, root)
    return _records(path, [str(base / name) for name, _ in headers], owner, boxes, landmarks,
                    np.ones(len(owner), dtype=np.int64))


def _labelv2_header(text: str, path: Path, number: int):
    parts = text.rsplit(None, 2)
    try:
        if len(parts) != 3:
            raise ValueError
        size = (int(parts[1]), int(parts[2]))
        if min(size) <= 0:
            raise ValueError
    except ValueError:
        raise AnnotationError(path, number, "expected '# <image path> <width> <height>' with "
                                            f"positive integer sizes, got '# {text}'") from None
    return parts[0], size


def read_labelv2(path, root=None, split: str = "train") -> list[FaceRecord]:
    """SCRFD's ``labelv2.txt``: ``# <image path> <W> <H>`` then per face ``x1 y1 x2 y2``
    (4 numbers), + 5 x ``(lx ly flag)`` (19; SCRFD's training files, -1 -1 -1 for an absent
    point) or + 5 x ``(lx ly)`` (14). Image paths are relative to ``root`` or, by default,
    ``images/`` beside the label file (SCRFD's ``data/retinaface/<split>/`` layout)."""
    path = Path(path)
    headers, groups, owner = _parse_blocks(path, LABELV2_WIDTHS, _labelv2_header,
                                           "4, 14 or 19 numbers (x1 y1 x2 y2 [+ 5 x lx ly "
                                           "[flag]])")
    boxes, landmarks = _faces(path, groups, len(owner))
    base = _image_base(path, root)
    return _records(path, [str(base / name) for name, _ in headers], owner, boxes, landmarks,
                    np.ones(len(owner), dtype=np.int64), [size for _, size in headers])


# ---- laboro -------------------------------------------------------------------------------------

def _read_image_list(path: Path, images: Path) -> list[FaceRecord]:
    """One image path a line (a leading '/' is dropped: the path is relative to ``images``),
    no boxes: Pytorch_Retinaface's ``wider_val.txt`` convention."""
    records = []
    for number, line in _read_lines(path):
        tokens = line.split()
        if len(tokens) != 1:
            raise AnnotationError(path, number, "expected one image path a line (this split's "
                                                "boxes come from a separate ground truth)")
        records.append(FaceRecord(str(images / tokens[0].lstrip("/")), np.zeros((0, 4)),
                                  np.zeros((0, NUM_LANDMARKS, 2)), np.zeros(0, dtype=np.int64)))
    return records


def read_laboro(path, root=None, split: str = "train") -> list[FaceRecord]:
    """The Laboro TV Face layout under the dataset root ``path``::

        train/images/  train/label.txt        (Pytorch_Retinaface label.txt)
        val/images/    val/tvval_list.txt
        test/images/   test/tvtest_list.txt

    as LaboroTVFaceModels' README describes it. The val/test lists are read like
    Pytorch_Retinaface's ``wider_val.txt`` (one image path a line, no boxes: the release ships
    their ground truth separately for its evaluation script); nothing public states more about
    them. A ``label.txt`` in a val/test folder, when present, is read instead (boxes). ``root``
    replaces ``<split>/images`` as the image folder.
    """
    dataset = Path(path)
    if split not in LABORO_LISTS:
        raise ValueError(f"unknown Laboro TV Face split {split!r}; "
                         f"known: {', '.join(LABORO_LISTS)}")
    if not dataset.is_dir():
        raise FileNotFoundError(f"Laboro TV Face root {dataset} is not a folder")
    folder = dataset / split
    images = Path(root) if root is not None else folder / "images"
    if not images.is_dir():
        raise AnnotationError(images, None, f"image folder missing (the Laboro TV Face layout "
                                            f"has {split}/images/ under the dataset root)")
    label = folder / "label.txt"
    if label.is_file():
        return read_retinaface(label, root=images)
    listing = folder / LABORO_LISTS[split] if LABORO_LISTS[split] else None
    if listing is None or not listing.is_file():
        wanted = "label.txt" + (f" or {LABORO_LISTS[split]}" if LABORO_LISTS[split] else "")
        raise AnnotationError(folder, None, f"no annotation file: expected {wanted} here")
    return _read_image_list(listing, images)


# ---- dlib_xml -----------------------------------------------------------------------------------

DLIB_BOX_KEYS = ("top", "left", "width", "height")
# The 5 points of the other formats from dlib's 68-point (iBUG 300-W) parts: the image-left eye
# (mean of parts 36-41), the image-right eye (42-47), the nose tip (30), the mouth corners (48, 54).
DLIB_FIVE_POINTS = (tuple(range(36, 42)), tuple(range(42, 48)), (30,), (48,), (54,))


class _DlibHandler:
    """expat callbacks collecting images, boxes (dlib's ``top left width height``), their
    ``ignore`` flag and 68-point parts, each with the line it was read on."""

    def __init__(self, path: Path, parser):
        self.path, self.parser = path, parser
        self.images: list[str] = []
        self.sizes: list[tuple[int, int] | None] = []
        self.boxes: list[list[float]] = []
        self.owner: list[int] = []
        self.ignore: list[bool] = []
        self.parts: list[dict[int, tuple[float, float]]] = []
        self.in_box = False

    def error(self, message: str):
        return AnnotationError(self.path, self.parser.CurrentLineNumber, message)

    def number(self, attrs: dict, key: str, tag: str) -> float:
        try:
            value = float(attrs[key])
        except KeyError:
            raise self.error(f"<{tag}> has no '{key}' attribute") from None
        except ValueError:
            raise self.error(f"<{tag} {key}={attrs[key]!r}> is not a number") from None
        if not np.isfinite(value):
            raise self.error(f"<{tag} {key}={attrs[key]!r}> is not finite")
        return value

    def start(self, tag: str, attrs: dict) -> None:
        if tag == "image":
            if not attrs.get("file"):
                raise self.error("<image> has no 'file' attribute")
            self.images.append(attrs["file"])
            size = (attrs.get("width"), attrs.get("height"))
            self.sizes.append((int(size[0]), int(size[1])) if all(
                v is not None and v.isdigit() for v in size) else None)
        elif tag == "box":
            if not self.images:
                raise self.error("<box> outside any <image>")
            self.boxes.append([self.number(attrs, k, "box") for k in DLIB_BOX_KEYS])
            self.owner.append(len(self.images) - 1)
            self.ignore.append(attrs.get("ignore", "0").strip() not in ("", "0"))
            self.parts.append({})
            self.in_box = True
        elif tag == "part" and self.in_box:
            name = attrs.get("name", "")
            if not name.isdigit():
                raise self.error(f"<part name={name!r}> is not a point number")
            self.parts[-1][int(name)] = (self.number(attrs, "x", "part"),
                                         self.number(attrs, "y", "part"))

    def end(self, tag: str) -> None:
        if tag == "box":
            self.in_box = False


def _dlib_landmarks(parts: list[dict[int, tuple[float, float]]]) -> np.ndarray:
    """``[n, 5, 2]``: the 5 points from each box's 68 parts (-1 for a box without all of the
    parts they need)."""
    out = np.full((len(parts), NUM_LANDMARKS, 2), MISSING)
    for i, points in enumerate(parts):
        if all(k in points for group in DLIB_FIVE_POINTS for k in group):
            out[i] = [np.mean([points[k] for k in group], axis=0) for group in DLIB_FIVE_POINTS]
    return out


def read_dlib_xml(path, root=None, split: str = "train") -> list[FaceRecord]:
    """dlib's imglab XML (the encoding the file declares; dlib's own are ISO-8859-1). Boxes
    are ``top left width height`` pixels, so ``x1, y1 = left, top`` and ``x2 = left + width``;
    a box with ``ignore='1'`` keeps label 0 (the others 1: dlib scores neither a hit nor a
    miss on an ignored box). With the 68 ``<part>`` points of dlib's landmark files, the 5
    landmarks are :data:`DLIB_FIVE_POINTS`. Image paths are relative to ``root`` or, by
    default, to the XML file's folder (dlib's convention); ``split`` is unused. Malformed XML
    or a box without a number raises :class:`AnnotationError` naming ``file:line``."""
    from xml.parsers import expat
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist")
    parser = expat.ParserCreate()
    handler = _DlibHandler(path, parser)
    parser.StartElementHandler, parser.EndElementHandler = handler.start, handler.end
    try:
        parser.Parse(path.read_bytes(), True)
    except expat.ExpatError as exc:
        raise AnnotationError(path, exc.lineno, f"not well-formed XML ({expat.ErrorString(exc.code)}, "
                                                f"column {exc.offset + 1})") from None
    if not handler.images:
        raise AnnotationError(path, None, "no <image file=...> element (not a dlib XML file?)")
    values = np.asarray(handler.boxes, dtype=np.float64).reshape(-1, 4)
    boxes = np.stack([values[:, 1], values[:, 0], values[:, 1] + values[:, 2],
                      values[:, 0] + values[:, 3]], axis=1)     # top left w h -> x1 y1 x2 y2
    base = Path(root) if root is not None else path.parent
    return _records(path, [str(base / name) for name in handler.images],
                    np.asarray(handler.owner, dtype=np.int64), boxes,
                    _dlib_landmarks(handler.parts),
                    np.where(handler.ignore, 0, 1).astype(np.int64), handler.sizes)


FORMATS: dict[str, Callable[..., list[FaceRecord]]] = {
    "wider": read_wider,
    "retinaface": read_retinaface,
    "labelv2": read_labelv2,
    "laboro": read_laboro,
    "dlib_xml": read_dlib_xml,
}


def format_choices() -> tuple[str, ...]:
    """What a ``--format`` flag or a FACE.*_FORMAT key may name: ``auto`` (sniffed) or a
    registered format; every tool reads its choices from here."""
    return ("auto", *FORMATS)


# ---- format detection and the front door --------------------------------------------------------

def detect_format(path) -> str:
    """The format of ``path`` by its content (a folder: by its layout)."""
    path = Path(path)
    known = ", ".join(FORMATS)
    if path.is_dir():
        if any((path / split / "images").is_dir() for split in LABORO_LISTS):
            return "laboro"
        raise AnnotationError(path, None, "folder is not a Laboro TV Face root (no train/, val/ "
                                          f"or test/ with images/); known formats: {known}")
    if path.is_file() and path.read_bytes()[:256].lstrip(UTF8_BOM + b" \t\r\n").startswith(b"<"):
        return "dlib_xml"                           # XML (any encoding): dlib's imglab format
    lines = _read_lines(path)
    if not lines:
        raise AnnotationError(path, None, f"no annotation lines to tell the format from; "
                                          f"known formats: {known}")
    number, line = lines[0]
    tokens = line.split()
    if line.startswith("#"):
        head = line[1:].split()
        is_v2 = len(head) >= 3 and head[-1].isdigit() and head[-2].isdigit()
        return "labelv2" if is_v2 else "retinaface"
    if len(tokens) >= 2 and tokens[1].isdigit() and len(tokens) == 2 + 5 * int(tokens[1]):
        return "wider"
    raise AnnotationError(path, number, f"unknown annotation format (line {line[:60]!r}); "
                                        f"known formats: {known}")


def read_annotations(path: str | Path, fmt: str = "auto", root: str | Path | None = None,
                     split: str = "train") -> list[FaceRecord]:
    """Read ``path`` in format ``fmt`` (``"auto"``: :func:`detect_format`). ``root``: where
    relative image paths point (default: per format); ``split``: for ``laboro`` only."""
    if fmt == "auto":
        fmt = detect_format(path)
    reader = FORMATS.get(fmt)
    if reader is None:
        raise ValueError(f"unknown annotation format {fmt!r}; known: auto, {', '.join(FORMATS)}")
    return reader(path, root=root, split=split)


# ---- writing ------------------------------------------------------------------------------------

def _number(value: float) -> str:
    """Integers without a decimal point (as the WIDER list files), others exactly (repr)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _relative(image: str, base: Path) -> str:
    """``image`` relative to ``base`` when it lies below it, else absolute (still valid)."""
    absolute = Path(image).absolute()
    try:
        return str(absolute.relative_to(base.absolute()))
    except ValueError:
        return str(absolute)


def _no_blanks(name: str, fmt: str) -> str:
    if not name or name != "".join(name.split()):
        raise ValueError(f"image path {name!r} is empty or has whitespace: the {fmt} format "
                         "cannot hold it")
    return name


def _point_triples(landmarks: np.ndarray) -> np.ndarray:
    """``[n, 5, 2]`` -> ``[n, 15]`` x, y, flag (0 = annotated; -1 -1 -1 for an absent point)."""
    absent = (landmarks == MISSING).all(axis=2, keepdims=True)
    return np.concatenate([landmarks, np.where(absent, MISSING, 0.0)], axis=2).reshape(-1, 15)


def _xywh(boxes: np.ndarray) -> np.ndarray:
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def _write_wider(records: list[FaceRecord], base: Path) -> Iterable[str]:
    for r in records:
        name = _no_blanks(_relative(r.path, base), "wider")
        values = np.concatenate([_xywh(r.boxes), r.labels[:, None]], axis=1).ravel()
        yield " ".join([name, str(len(r.boxes))] + [_number(v) for v in values])


def _write_blocks(records: list[FaceRecord], base: Path, fmt: str) -> Iterable[str]:
    with_points = any(has_landmarks(r).any() for r in records)
    for r in records:
        name = _relative(r.path, base)
        if fmt == "labelv2":
            if r.size is None:
                raise ValueError(f"{r.path}: labelv2 needs the image size (W, H); set "
                                 "FaceRecord.size")
            yield f"# {_no_blanks(name, fmt)} {int(r.size[0])} {int(r.size[1])}"
            faces = r.boxes
        else:
            yield f"# {name}"
            faces = _xywh(r.boxes)
        if with_points:          # then every face line carries them (SCRFD's training reader)
            faces = np.concatenate([faces, _point_triples(r.landmarks)], axis=1)
            if fmt == "retinaface":          # the trailing per-face value, unknown here: -1
                faces = np.concatenate([faces, np.full((len(faces), 1), MISSING)], axis=1)
        for face in faces:
            yield " ".join(_number(v) for v in face)


WRITERS = {
    "wider": _write_wider,
    "retinaface": lambda records, base: _write_blocks(records, base, "retinaface"),
    "labelv2": lambda records, base: _write_blocks(records, base, "labelv2"),
}


def write_annotations(records: Iterable[FaceRecord], path: str | Path, fmt: str,
                      root: str | Path | None = None) -> None:
    """Write ``records`` to ``path`` in ``fmt`` (``wider``, ``retinaface`` or ``labelv2``).

    Image paths are written relative to ``root`` (default: where the reader of ``fmt`` will
    look, so reading the file back gives the same paths), or absolute when outside it. With
    landmarks on any face, every face line carries the 15 landmark numbers (absent: -1).
    """
    writer = WRITERS.get(fmt)
    if writer is None:
        raise ValueError(f"cannot write annotation format {fmt!r}; writable: {', '.join(WRITERS)}")
    path = Path(path)
    base = Path("." if root is None else root) if fmt == "wider" else _image_base(path, root)
    lines = list(writer(list(records), base))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as f:
        f.writelines(line + "\n" for line in lines)


def read_training_records(cfg, list_file, root) -> list[FaceRecord]:
    """FaceRecords of a training list ``list_file`` in FACE.SRC_FORMAT (``auto`` sniffs it);
    images under FACE.IMAGE_ROOT, or for the WIDER list ``root`` (FACE.DATA_ROOT)."""
    fmt = cfg.FACE.SRC_FORMAT if cfg.FACE.SRC_FORMAT != "auto" else detect_format(list_file)
    image_root = cfg.FACE.IMAGE_ROOT or (root if fmt == "wider" else None)
    return read_annotations(Path(list_file), fmt, root=image_root)
