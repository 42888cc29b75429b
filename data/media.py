"""Frames from any media a user points a tool at: one image, a folder of images, a list file,
a video file or a camera.

    for name, bgr in iter_frames("night.mp4", every=0.5, stats=stats): ...

``source`` is

* an image file (extension in :data:`data.image_folder.IMAGE_EXTENSIONS`): one frame, named by
  its path;
* a folder: every image below it (recursive, sorted), each named by its path;
* a video file (extension in :data:`VIDEO_EXTENSIONS`): its frames, named
  ``<video stem>/<video stem>_<frame index, 6 digits>`` (the index in the whole video, so a
  sampled frame keeps its place; the folder part groups a video's frames, e.g. as the WIDER
  layout's event);
* a camera index (an ``int`` or a string of digits such as ``"0"``): frames named
  ``camera<i>/camera<i>_<n, 6 digits>`` until ``max_frames`` or the camera stops;
* any other existing file: a list file, one image path per line (its first token, so WIDER
  list files work; ``#`` comments and blank lines skipped; relative paths joined to ``root``).

Frames are ``HxWx3`` uint8 **BGR** (the OpenCV convention). Images are decoded with the project's
one decoder (:func:`data.image_folder.read_rgb`, PIL), so a folder gives the same pixels as
``test.py`` reads. ``every`` (seconds) samples a video every ``round(every * fps)`` frames (the
others are skipped with ``grab``, without decoding) and a camera by the clock; images ignore it.

An unreadable image or video frame is skipped and counted in the caller's :class:`FrameStats`
(with a warning naming it); a source that does not exist or cannot be opened raises naming it.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from data.image_folder import IMAGE_EXTENSIONS, UNREADABLE, read_rgb
from data.predictions import list_images

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv",
                    ".flv", ".ts", ".3gp"}
DEFAULT_FPS = 25.0          # when a video does not state its frame rate
MAX_FAILED_READS = 10       # consecutive failed video reads before the rest counts as lost


@dataclass
class FrameStats:
    """What an :func:`iter_frames` run read and skipped (the caller prints it)."""

    read: int = 0
    skipped: int = 0
    skipped_names: list[str] = field(default_factory=list)

    def skip(self, name: str, reason: str, count: int = 1) -> None:
        self.skipped += count
        self.skipped_names.append(name)
        log.warning("skipping unreadable %s: %s", name, reason)

    def summary(self) -> str:
        return f"{self.read} frames read, {self.skipped} unreadable skipped"


@dataclass(frozen=True)
class MediaInfo:
    """``kind``: image | folder | list | video | camera; ``count``: the frames
    :func:`iter_frames` will try to yield (None when unknown: a camera); ``fps``: the rate of
    the yielded frames (a video's rate divided by the sampling step; None for images)."""

    kind: str
    count: int | None
    fps: float | None


def camera_index(source) -> int | None:
    """The camera index of ``source`` (an int or a string of digits), else None."""
    if isinstance(source, int) and not isinstance(source, bool):
        return source
    if isinstance(source, str) and source.strip().isdigit():
        return int(source.strip())
    return None


def source_kind(source) -> str:
    """image | folder | list | video | camera; a missing path raises naming it."""
    if camera_index(source) is not None:
        return "camera"
    path = Path(source)
    if path.is_dir():
        return "folder"
    if not path.is_file():
        raise FileNotFoundError(f"input {source}: no such image, folder, list file or video "
                                f"(a camera is given by its index, e.g. 0)")
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    return "video" if suffix in VIDEO_EXTENSIONS else "list"


def open_video(source) -> cv2.VideoCapture:
    """An opened ``cv2.VideoCapture`` of a video file or camera index; raises naming it."""
    index = camera_index(source)
    cap = cv2.VideoCapture(index if index is not None else str(source))
    if not cap.isOpened():
        cap.release()
        what = f"camera {index}" if index is not None else f"video {source}"
        raise OSError(f"{what} could not be opened (OpenCV VideoCapture)")
    return cap


def video_step(fps: float, every: float | None) -> int:
    """Frames between two sampled frames for one sample every ``every`` seconds."""
    if every is None or every <= 0:
        return 1
    return max(1, round(every * fps))


def _video_props(cap: cv2.VideoCapture) -> tuple[float, int | None]:
    fps = cap.get(cv2.CAP_PROP_FPS)
    fps = fps if fps and math.isfinite(fps) and fps > 0 else DEFAULT_FPS
    total = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    return fps, int(total) if total and math.isfinite(total) and total > 0 else None


def probe(source, every: float | None = None, max_frames: int | None = None,
          root: str | Path = ".") -> MediaInfo:
    """What :func:`iter_frames` will yield, without decoding any frame."""
    kind = source_kind(source)
    cap_n = (lambda n: n if max_frames is None or n is None else min(n, max_frames))
    if kind in ("image", "folder", "list"):
        return MediaInfo(kind, cap_n(len(list_images(source, root))), None)
    cap = open_video(source)
    try:
        fps, total = _video_props(cap)
    finally:
        cap.release()
    step = video_step(fps, every)
    if kind == "camera":
        rate = fps if every is None or every <= 0 else min(fps, 1.0 / every)
        return MediaInfo(kind, max_frames, rate)
    count = None if total is None else -(-total // step)
    return MediaInfo(kind, cap_n(count), fps / step)


def count_frames(source, every: float | None = None, max_frames: int | None = None,
                 root: str | Path = ".") -> int | None:
    """The number of frames :func:`iter_frames` will try to yield (None: unknown)."""
    return probe(source, every, max_frames, root).count


def iter_frames(source, every: float | None = None, max_frames: int | None = None,
                stats: FrameStats | None = None, root: str | Path = "."
                ) -> Iterator[tuple[str, np.ndarray]]:
    """``(name, BGR uint8 frame)`` of ``source`` (module doc); ``stats`` is updated."""
    stats = stats if stats is not None else FrameStats()
    kind = source_kind(source)
    if max_frames is not None and max_frames <= 0:
        return
    if kind == "video":
        frames = _video_frames(source, every, stats)
    elif kind == "camera":
        frames = _camera_frames(camera_index(source), every, stats)
    else:
        frames = _image_frames(list_images(source, root), stats)
    for n, item in enumerate(frames, 1):
        stats.read += 1
        yield item
        if max_frames is not None and n >= max_frames:
            return


def _image_frames(paths: list[Path], stats: FrameStats) -> Iterator[tuple[str, np.ndarray]]:
    for path in paths:
        try:
            rgb = read_rgb(path)
        except UNREADABLE as exc:
            stats.skip(str(path), str(exc))
            continue
        yield str(path), np.ascontiguousarray(rgb[..., ::-1])


def _video_frames(source, every: float | None, stats: FrameStats
                  ) -> Iterator[tuple[str, np.ndarray]]:
    """Sampled frames of a video file. A failed read before the stated end is an unreadable
    frame (skipped, counted); after :data:`MAX_FAILED_READS` failures in a row the sampled
    frames left before the stated end are counted as unreadable too, and reading stops."""
    cap = open_video(source)
    stem = Path(source).stem
    try:
        fps, total = _video_props(cap)
        step = video_step(fps, every)
        index, failures = 0, 0
        while True:
            sampled = index % step == 0
            ok, frame = cap.read() if sampled else (cap.grab(), None)
            name = f"{stem}/{stem}_{index:06d}"
            if ok and (not sampled or frame is not None and frame.size):
                failures = 0
                if sampled:
                    yield name, frame
            elif total is None or index >= total:
                return                                       # the end of the stream
            else:
                failures += 1
                if sampled:
                    stats.skip(name, f"frame {index} of {source} could not be decoded")
                if failures >= MAX_FAILED_READS:
                    left = len(range(index + 1 + (-(index + 1)) % step, total, step))
                    if left:
                        stats.skip(f"{stem} frames {index + 1}..{total - 1}",
                                   f"{source} stopped decoding", left)
                    return
            index += 1
    finally:
        cap.release()


def _camera_frames(index: int, every: float | None, stats: FrameStats
                   ) -> Iterator[tuple[str, np.ndarray]]:
    """Camera frames, one per ``every`` seconds by the clock (all frames when None); stops
    after :data:`MAX_FAILED_READS` failed reads in a row."""
    cap = open_video(index)
    try:
        n, failures, last = 0, 0, -math.inf
        while failures < MAX_FAILED_READS:
            ok, frame = cap.read()
            name = f"camera{index}/camera{index}_{n:06d}"
            if not ok or frame is None:
                failures += 1
                stats.skip(name, f"camera {index} returned no frame")
                continue
            failures = 0
            now = time.monotonic()
            if every is None or every <= 0 or now - last >= every:
                last = now
                yield name, frame
                n += 1
    finally:
        cap.release()
