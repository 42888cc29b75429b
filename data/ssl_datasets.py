"""Datasets of the self-supervised tasks (jigsaw, rotation, MoCo) and their endless loaders.

Every sample is a crop centred on a face: a WIDER ground-truth box for the source domain H, a
pseudo box (``mf_dsfd_dark_face_train.txt`` format, negative coordinates allowed) for the
enhanced target domain E(L). The boxes only place the crops; their labels are never used.

* :class:`JigsawDataset`: 3x3 (30 classes, data/permutations.py), 2x2 / 4x1 / 1x4 (24 classes)
  puzzles.
* :class:`RotationDataset`: the 4-way rotation task.
* :class:`ContrastiveDataset`: two MoCo-v2 views of one 288-px crop (E(L) or H).
* :class:`TransferDataset`: two views, each drawn from the clean crop H or the same crop of its
  degraded copy D(H) (``SSL.NOISE_DIR/<basename>``).

As :class:`data.widerface.WIDERDetection`, a sample is a pure function of ``(seed, epoch, index)``
(keys come from :class:`data.samplers.ResumableSampler`), so resumed runs and any number of
DataLoader workers see the same stream. Each dataset gets its own ``seed`` (:func:`stream_seed`)
so two loaders over the same list file draw different crops. An unreadable image is logged,
counted in the sample's ``skipped`` and replaced by another random image; crops that reach past
the image border are padded with black (PIL's crop), as in the reference.
"""
from __future__ import annotations

import logging
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter
from torch.utils.data import DataLoader, Dataset

from data.augmentations import distort_image, normalize_image
from utils.files import resolve_path
from data.permutations import PERMUTATIONS
from data.samplers import ResumableSampler
from data.widerface import MAX_DRAWS, UNREADABLE, Record, load_rgb, parse_list_file

logger = logging.getLogger(__name__)

PUZZLE_WINDOW = 256          # jigsaw / rotation crop around the face centre, before the zoom
CONTRASTIVE_WINDOW = 288     # contrastive / transfer crop around the face, cut into two views
CENTRE_JITTER = 16           # U{-16..16} px on the window position
ZOOM_SIZES = (256, 640)      # the puzzle crop is resized to n x n, n ~ U{256..640}
ZOOM_RESAMPLE = Image.Resampling.BICUBIC   # PIL's default filter for Image.resize
VIEW_SIZE = 256              # side of a MoCo view
RRC_SCALE = (0.2, 1.0)       # MoCo v2 RandomResizedCrop
RRC_RATIO = (3 / 4, 4 / 3)

# ColorJitter (brightness range, contrast, saturation, hue) of the two contrastive recipes
MOCO_JITTER = ((0.6, 1.4), 0.4, 0.4, 0.1)          # MoCo v2's ColorJitter(0.4, 0.4, 0.4, 0.1)
TRANSFER_JITTER = ((0.4, 1.2), 0.4, 0.4, 0.2)      # the H/D(H) views, "for dark face": the
                                                   # colour bias of the degradation D(H)


@dataclass(frozen=True)
class PuzzleSpec:
    """Geometry of one jigsaw kind (the 3x3 puzzle of the paper, or 2x2 / 4x1 / 1x4)."""
    keep: int                      # side of the zoomed window cut into tiles (255 or 256)
    grid: tuple[int, int]          # (columns, rows)
    tile_out: tuple[int, int]      # (width, height) of a tile in the puzzle
    strip: int = 0                 # 4x1 / 1x4: random sub-strip length along the strip


PUZZLES = {
    "33": PuzzleSpec(255, (3, 3), (64, 64)),          # 85-px tiles, central 64 ("edge 21")
    "22": PuzzleSpec(256, (2, 2), (96, 96)),          # 128-px tiles, central 96 ("edge 32")
    "41": PuzzleSpec(256, (4, 1), (48, 192), 208),    # vertical 64x256 strips
    "14": PuzzleSpec(256, (1, 4), (192, 48), 208),    # horizontal 256x64 strips
}


def stream_seed(seed: int, name: str) -> int:
    """A 32-bit seed for the loader called ``name`` (its sampler and its augmentation)."""
    return int(np.random.SeedSequence([seed, zlib.crc32(name.encode())]).generate_state(1)[0])


# ---------------------------------------------------------------------------------------------
# geometry


def face_centre(box: np.ndarray) -> tuple[int, int]:
    """Integer centre of an (x1, y1, x2, y2) pixel box (may lie outside the image)."""
    return int(math.floor((box[0] + box[2]) / 2)), int(math.floor((box[1] + box[3]) / 2))


def window_origin(centre: tuple[int, int], image_size: tuple[int, int], window: int,
                  rng: np.random.Generator, jitter: int = CENTRE_JITTER) -> tuple[int, int]:
    """Top-left of a ``window`` square centred on ``centre`` +- ``jitter``, clamped to
    ``[0, W - window] x [0, H - window]``; negative when the image is smaller than the window
    (the crop is then padded with black, as the reference's PIL crop)."""
    dx, dy = (int(v) for v in rng.integers(-jitter, jitter + 1, size=2))
    (cx, cy), (width, height) = centre, image_size
    left = min(max(cx - window // 2 + dx, 0), width - window)
    top = min(max(cy - window // 2 + dy, 0), height - window)
    return left, top


def crop_padded(img: Image.Image, left: int, top: int, size: int) -> Image.Image:
    """``size`` x ``size`` crop; pixels outside the image are black."""
    return img.crop((left, top, left + size, top + size))


def zoom_offset(n: int, keep: int, centre: float, keep_face: bool,
                rng: np.random.Generator) -> int:
    """Offset (one axis) of the ``keep`` window inside the ``n``-px zoomed crop.

    The reference keeps the bottom-right window (offset ``n - keep``), which at high zoom can
    lose the face (docs/DECISIONS.md, Adaptation). With ``keep_face`` the offset is drawn
    uniformly among the windows that contain the face centre ``centre`` (zoomed pixel
    coordinate); when none does (a centre outside the crop) the nearest window is taken.
    """
    if not keep_face:
        return n - keep
    lo = max(0, math.floor(centre - keep) + 1)       # o <= centre < o + keep
    hi = min(n - keep, math.floor(centre))
    if lo > hi:
        return int(min(max(round(centre - keep / 2), 0), n - keep))
    return int(rng.integers(lo, hi + 1))


def random_zoom(crop: Image.Image, keep: int, centre: tuple[float, float], keep_face: bool,
                rng: np.random.Generator) -> Image.Image:
    """Resize the square crop to n ~ U{256..640} and keep a ``keep`` window of it
    (the bottom-right one in the reference). ``centre``: the face centre in crop pixels."""
    n = int(rng.integers(ZOOM_SIZES[0], ZOOM_SIZES[1] + 1))
    scale = n / crop.size[0]
    crop = crop.resize((n, n), ZOOM_RESAMPLE)
    ox = zoom_offset(n, keep, (centre[0] + 0.5) * scale, keep_face, rng)
    oy = zoom_offset(n, keep, (centre[1] + 0.5) * scale, keep_face, rng)
    return crop.crop((ox, oy, ox + keep, oy + keep))


def assemble_puzzle(window: np.ndarray, spec: PuzzleSpec, perm: Sequence[int], aug,
                    rng: np.random.Generator) -> np.ndarray:
    """Cut ``window`` (``[keep, keep, 3]`` uint8) into tiles and place tile ``perm[t]`` in slot
    ``t``; returns the uint8 puzzle (``[rows * th, cols * tw, 3]``, 192 x 192 for every kind).

    Tiles and slots are numbered column-major: tile ``n`` sits at column ``n // rows``, row
    ``n % rows`` of the grid (the reference enumerates x-offset ``n // 3 * 85`` and y-offset
    ``n % 3 * 85`` for 3x3). Each tile is cut to its central ``tile_out`` (after a random
    sub-strip for 4x1 / 1x4) and colour-distorted on its own (the detection loader's
    :func:`data.augmentations.distort_image`).
    """
    cols, rows = spec.grid
    cell_w, cell_h = spec.keep // cols, spec.keep // rows
    tile_w, tile_h = spec.tile_out
    tiles = []
    for n in range(cols * rows):
        x, y = (n // rows) * cell_w, (n % rows) * cell_h
        region_w, region_h = cell_w, cell_h
        if spec.strip and cell_h > cell_w:                  # 4x1: a random 208-tall piece
            y += int(rng.integers(0, cell_h - spec.strip + 1))
            region_h = spec.strip
        elif spec.strip:                                    # 1x4: a random 208-wide piece
            x += int(rng.integers(0, cell_w - spec.strip + 1))
            region_w = spec.strip
        x += (region_w - tile_w) // 2
        y += (region_h - tile_h) // 2
        tile = window[y:y + tile_h, x:x + tile_w]
        if aug.apply_distort:
            tile = np.asarray(distort_image(Image.fromarray(tile), aug, rng))
        tiles.append(tile)
    puzzle = np.empty((rows * tile_h, cols * tile_w, 3), dtype=np.uint8)
    for t in range(cols * rows):
        x, y = (t // rows) * tile_w, (t % rows) * tile_h
        puzzle[y:y + tile_h, x:x + tile_w] = tiles[perm[t]]
    return puzzle


# ---------------------------------------------------------------------------------------------
# MoCo v2 views (random resized crop, colour jitter p 0.8, grey 0.2, blur p 0.5, flip), drawn
# from an explicit generator


def random_resized_crop(img: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    """torchvision's RandomResizedCrop(size, scale=(0.2, 1.0)) with a bilinear resize."""
    width, height = img.size
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*RRC_SCALE)
        aspect = math.exp(rng.uniform(math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1])))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = int(rng.integers(0, height - h + 1))
            j = int(rng.integers(0, width - w + 1))
            break
    else:                                                   # the central crop fallback
        w, h = width, height
        if width / height < RRC_RATIO[0]:
            h = int(round(w / RRC_RATIO[0]))
        elif width / height > RRC_RATIO[1]:
            w = int(round(h * RRC_RATIO[1]))
        i, j = (height - h) // 2, (width - w) // 2
    return img.resize((size, size), Image.Resampling.BILINEAR, box=(j, i, j + w, i + h))


def adjust_hue(img: Image.Image, factor: float) -> Image.Image:
    """torchvision's PIL hue shift: add ``factor * 255`` (truncated) to H, modulo 256."""
    hsv = np.array(img.convert("HSV"))
    hsv[..., 0] = (hsv[..., 0].astype(np.int64) + int(factor * 255)) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


def color_jitter(img: Image.Image, jitter, rng: np.random.Generator) -> Image.Image:
    """torchvision's ColorJitter: four factors, applied in a random order."""
    (b_lo, b_hi), contrast, saturation, hue = jitter
    order = rng.permutation(4)
    b = rng.uniform(b_lo, b_hi)
    c = rng.uniform(1 - contrast, 1 + contrast)
    s = rng.uniform(1 - saturation, 1 + saturation)
    h = rng.uniform(-hue, hue)
    for op in order:
        if op == 0:
            img = ImageEnhance.Brightness(img).enhance(b)
        elif op == 1:
            img = ImageEnhance.Contrast(img).enhance(c)
        elif op == 2:
            img = ImageEnhance.Color(img).enhance(s)
        else:
            img = adjust_hue(img, h)
    return img


def moco_view(img: Image.Image, jitter, rng: np.random.Generator, mean_bgr,
              size: int = VIEW_SIZE) -> np.ndarray:
    """One augmented view: RandomResizedCrop, ColorJitter (p 0.8), grey (p 0.2), Gaussian blur
    sigma ~ U(0.1, 2) (p 0.5), horizontal flip (p 0.5), then the detector's normalisation."""
    img = random_resized_crop(img, size, rng)
    if rng.random() < 0.8:
        img = color_jitter(img, jitter, rng)
    if rng.random() < 0.2:
        img = img.convert("L").convert("RGB")
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.1, 2.0)))
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return normalize_image(np.asarray(img), mean_bgr)


# ---------------------------------------------------------------------------------------------
# datasets


class SSLDataset(Dataset):
    """Common part: keys, per-sample generators, unreadable-image handling.

    ``dataset[(epoch, index)]`` returns ``(*tensors, skipped)``; subclasses implement
    :meth:`load` (the images of a record) and :meth:`make` (the sample from them).
    """

    def __init__(self, records: list[Record], aug, seed: int = 0, name: str = "ssl"):
        if not records:
            raise ValueError(f"{name}: no image with a valid box")
        self.records, self.aug, self.seed, self.name = records, aug, int(seed), name
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def load(self, record: Record) -> tuple[Image.Image, ...]:
        return (load_rgb(record.path),)

    def make(self, images, record: Record, rng: np.random.Generator) -> tuple:
        raise NotImplementedError

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, (tuple, list)) else (self.epoch, key)
        index = int(index) % len(self)
        rng = np.random.default_rng([self.seed, int(epoch), index])
        skipped = 0
        for _ in range(MAX_DRAWS):
            record = self.records[index]
            try:
                images = self.load(record)
            except UNREADABLE as exc:
                logger.warning("%s: skipping unreadable image %s (%s: %s)", self.name,
                               record.path, type(exc).__name__, exc)
                skipped += 1
                index = int(rng.integers(len(self)))
                continue
            return (*self.make(images, record, rng), skipped)
        raise RuntimeError(f"{self.name}: no readable image after {MAX_DRAWS} draws ({skipped} "
                           f"unreadable); check the image paths")

    def _face(self, record: Record, rng: np.random.Generator) -> tuple[int, int]:
        return face_centre(record.boxes[int(rng.integers(len(record.boxes)))])


class JigsawDataset(SSLDataset):
    """Jigsaw puzzles: ``(image [3, 192, 192], class, skipped)``.

    ``kind`` is '33', '22', '41' or '14'. ``keep_face`` (SSL.JIGSAW_KEEP_FACE) keeps the
    chosen face's centre inside the zoomed window; False is the reference's bottom-right window.
    """

    def __init__(self, records, aug, kind: str = "33", keep_face: bool = True, seed: int = 0,
                 name: str = "jigsaw"):
        super().__init__(records, aug, seed, name)
        if kind not in PUZZLES:
            raise ValueError(f"unknown jigsaw kind {kind!r}; expected one of {sorted(PUZZLES)}")
        self.spec, self.perms, self.keep_face = PUZZLES[kind], PERMUTATIONS[kind], keep_face

    def make(self, images, record, rng):
        (img,) = images
        cx, cy = self._face(record, rng)
        left, top = window_origin((cx, cy), img.size, PUZZLE_WINDOW, rng)
        crop = crop_padded(img, left, top, PUZZLE_WINDOW)
        window = random_zoom(crop, self.spec.keep, (cx - left, cy - top), self.keep_face, rng)
        label = int(rng.integers(len(self.perms)))
        puzzle = assemble_puzzle(np.asarray(window), self.spec, self.perms[label], self.aug, rng)
        return (torch.from_numpy(normalize_image(puzzle, self.aug.img_mean)),
                torch.tensor(label, dtype=torch.int64))


# PIL transposes for r x 90 degrees counter-clockwise, and where they send a point (x, y) of an
# S x S square (continuous coordinates)
ROTATIONS = (None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180,
             Image.Transpose.ROTATE_270)


def rotate_point(x: float, y: float, r: int, size: int) -> tuple[float, float]:
    for _ in range(r):
        x, y = y, size - x                  # 90 degrees counter-clockwise
    return x, y


class RotationDataset(SSLDataset):
    """Rotation by ``r`` x 90 degrees: ``(image [3, 256, 256], r in 0..3, skipped)``."""

    def __init__(self, records, aug, keep_face: bool = True, seed: int = 0,
                 name: str = "rotation"):
        super().__init__(records, aug, seed, name)
        self.keep_face = keep_face

    def make(self, images, record, rng):
        (img,) = images
        cx, cy = self._face(record, rng)
        left, top = window_origin((cx, cy), img.size, PUZZLE_WINDOW, rng)
        crop = crop_padded(img, left, top, PUZZLE_WINDOW)
        r = int(rng.integers(4))
        if r:
            crop = crop.transpose(ROTATIONS[r])
        centre = rotate_point(cx - left + 0.5, cy - top + 0.5, r, PUZZLE_WINDOW)
        window = random_zoom(crop, PUZZLE_WINDOW, (centre[0] - 0.5, centre[1] - 0.5),
                             self.keep_face, rng)
        if self.aug.apply_distort:
            window = distort_image(window, self.aug, rng)
        return (torch.from_numpy(normalize_image(np.asarray(window), self.aug.img_mean)),
                torch.tensor(r, dtype=torch.int64))


class ContrastiveDataset(SSLDataset):
    """MoCo pairs: ``(x_q [3, 256, 256], x_k [3, 256, 256], skipped)``, two
    independent views of one 288-px crop centred on a face."""

    jitter = MOCO_JITTER

    def __init__(self, records, aug, seed: int = 0, name: str = "contrastive",
                 size: int = VIEW_SIZE):
        super().__init__(records, aug, seed, name)
        self.size = size

    def _crop(self, img, record, rng):
        left, top = window_origin(self._face(record, rng), img.size, CONTRASTIVE_WINDOW, rng)
        return left, top, crop_padded(img, left, top, CONTRASTIVE_WINDOW)

    def make(self, images, record, rng):
        _, _, crop = self._crop(images[0], record, rng)
        views = [moco_view(crop, self.jitter, rng, self.aug.img_mean, self.size) for _ in "qk"]
        return tuple(torch.from_numpy(v) for v in views)


class TransferDataset(ContrastiveDataset):
    """H <-> D(H) pairs: each view comes, with probability 1/2, from the clean
    crop or from the same crop of the degraded image ``noise_dir/<basename>``, and gets the
    "dark face" colour jitter. A missing D(H) file counts as an unreadable image."""

    jitter = TRANSFER_JITTER

    def __init__(self, records, aug, noise_dir: str | Path, seed: int = 0,
                 name: str = "transfer", size: int = VIEW_SIZE):
        super().__init__(records, aug, seed, name, size)
        self.noise_dir = Path(noise_dir)

    def load(self, record):
        clean = load_rgb(record.path)
        degraded = load_rgb(str(self.noise_dir / Path(record.path).name))
        if degraded.size != clean.size:     # D(H) is written at H's size; tolerate a resave
            degraded = degraded.resize(clean.size, Image.Resampling.BILINEAR)
        return clean, degraded

    def make(self, images, record, rng):
        clean, degraded = images
        left, top, crop_h = self._crop(clean, record, rng)
        crop_d = crop_padded(degraded, left, top, CONTRASTIVE_WINDOW)
        views = [moco_view(crop_d if rng.random() < 0.5 else crop_h, self.jitter, rng,
                           self.aug.img_mean, self.size) for _ in "qk"]
        return tuple(torch.from_numpy(v) for v in views)


def ssl_collate(batch):
    """Stack every tensor field, sum the skipped counts: ``(*[B, ...], skipped)``."""
    *fields, skipped = zip(*batch)
    return (*[torch.stack(f, 0) for f in fields], int(sum(skipped)))


# ---------------------------------------------------------------------------------------------
# list files and folders, with errors that name the config key


def resolve(path: str | Path) -> Path:
    """A config path, absolute (so the errors below name the full path)."""
    return resolve_path(path).absolute()


def load_records(list_file: str, root: str, key: str) -> list[Record]:
    """Parse a list file named by config ``key``; check that its image folders exist."""
    path = resolve(list_file)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (set by config key {key})")
    records = parse_list_file(path, root=resolve(root))
    if not records:
        raise ValueError(f"{path} (config key {key}) has no image with a valid box")
    folders = {str(Path(r.path).parent) for r in records}
    missing = sorted(d for d in folders if not Path(d).is_dir())
    if missing:
        raise FileNotFoundError(
            f"image folder {missing[0]} does not exist ({len(missing)} missing folder(s)); the "
            f"image paths of {path} (config key {key}) are relative to config key "
            f"FACE.DATA_ROOT={root!r}")
    return records


def require_dir(folder: str, key: str) -> Path:
    path = resolve(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"image folder {path} does not exist (set by config key {key})")
    return path


# ---------------------------------------------------------------------------------------------
# endless, resumable loaders


class CyclingLoader:
    """Batches from one dataset without end (as the reference: shuffle, drop_last, re-created
    when exhausted), through a rank-sharded :class:`ResumableSampler`.

    ``state_dict()`` is ``{"epoch", "batches"}`` (batches consumed in that epoch), enough to
    continue the stream exactly after a resume with the same number of processes.
    """

    def __init__(self, dataset: Dataset, global_batch: int, rank: int, world: int, seed: int,
                 num_workers: int = 0, pin_memory: bool = False, name: str = "ssl",
                 collate_fn=None):
        if global_batch % world:
            raise ValueError(f"{name}: global batch {global_batch} is not divisible by {world} "
                             f"processes")
        self.local_batch, self.name = global_batch // world, name
        self.sampler = ResumableSampler(len(dataset), global_batch, shuffle=True, seed=seed,
                                        rank=rank, world=world)
        if self.sampler.per_rank < self.local_batch:
            raise ValueError(f"{name}: {len(dataset)} images cannot fill a batch of "
                             f"{self.local_batch} per process")
        self.loader = DataLoader(dataset, batch_size=self.local_batch, sampler=self.sampler,
                                 num_workers=num_workers, collate_fn=collate_fn or ssl_collate,
                                 pin_memory=pin_memory, drop_last=True,
                                 persistent_workers=num_workers > 0,
                                 generator=torch.Generator())   # keep the global RNG untouched
        self.epoch, self.batches, self._iter = 0, 0, None

    def _start(self) -> None:
        self.sampler.set_epoch(self.epoch, skip=self.batches * self.local_batch)
        self._iter = iter(self.loader)

    def __iter__(self):
        return self

    def __next__(self):
        if self._iter is None:
            self._start()
        try:
            batch = next(self._iter)
        except StopIteration:
            self.epoch, self.batches = self.epoch + 1, 0
            self._start()
            batch = next(self._iter)
        self.batches += 1
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batches, self._iter = int(state["epoch"]), int(state["batches"]), None
