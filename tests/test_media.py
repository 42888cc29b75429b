"""data/media.py: images, folders, list files and videos (written here) as frames."""
from pathlib import Path

import cv2
import numpy as np
import pytest

from data.media import FrameStats, count_frames, iter_frames, probe, source_kind


def write_video(path: Path, n: int, fps: float = 10.0, size=(64, 48)) -> list[int]:
    """An MJPG video whose frame i is a flat grey of level 10 * i % 250 (returned)."""
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert w.isOpened()
    levels = [10 * i % 250 for i in range(n)]
    for level in levels:
        w.write(np.full((size[1], size[0], 3), level, np.uint8))
    w.release()
    return levels


def write_images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        img = np.zeros((20, 30, 3), np.uint8)
        img[..., 0] = 200                       # blue in BGR
        img[0, 0] = i
        paths.append(folder / f"img{i}.png")
        cv2.imwrite(str(paths[-1]), img)
    return paths


def test_folder_frames_are_bgr_and_sorted(tmp_path):
    paths = write_images(tmp_path / "imgs" / "sub", 3)
    stats = FrameStats()
    frames = list(iter_frames(tmp_path / "imgs", stats=stats))
    assert [n for n, _ in frames] == [str(p) for p in paths]
    for i, (_, f) in enumerate(frames):
        assert f.dtype == np.uint8 and f.shape == (20, 30, 3)
        assert f[5, 5, 0] == 200 and f[5, 5, 2] == 0 and f[0, 0, 0] == i
    assert (stats.read, stats.skipped) == (3, 0)
    assert count_frames(tmp_path / "imgs") == 3 and source_kind(paths[0]) == "image"
    assert [n for n, _ in iter_frames(paths[1])] == [str(paths[1])]


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    paths = write_images(tmp_path, 2)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    listing = tmp_path / "list.txt"
    listing.write_text(f"# comment\n{paths[0]}\n{tmp_path / 'missing.png'} 3\n\n{paths[1]}\n")
    stats = FrameStats()
    names = [n for n, _ in iter_frames(listing, stats=stats)]
    assert names == [str(paths[0]), str(paths[1])]
    assert (stats.read, stats.skipped) == (2, 1) and "missing.png" in stats.skipped_names[0]
    stats = FrameStats()
    assert len(list(iter_frames(tmp_path, stats=stats))) == 2 and stats.skipped == 1
    assert "broken.jpg" in stats.skipped_names[0]


def test_video_all_frames_sampling_and_limits(tmp_path):
    video = tmp_path / "clip.avi"
    levels = write_video(video, 20, fps=10)
    frames = list(iter_frames(video))
    assert [n for n, _ in frames][:2] == ["clip/clip_000000", "clip/clip_000001"]
    assert len(frames) == 20
    means = [f.mean() for _, f in frames]
    assert np.allclose(means, levels, atol=3)           # MJPG is lossy
    info = probe(video)
    assert (info.kind, info.count, info.fps) == ("video", 20, 10.0)
    # one frame every 0.5 s at 10 fps: frames 0, 5, 10, 15
    sampled = list(iter_frames(video, every=0.5))
    assert [n for n, _ in sampled] == [f"clip/clip_{i:06d}" for i in (0, 5, 10, 15)]
    assert np.allclose([f.mean() for _, f in sampled], [0, 50, 100, 150], atol=3)
    assert count_frames(video, every=0.5) == 4 and probe(video, every=0.5).fps == 2.0
    assert len(list(iter_frames(video, every=0.5, max_frames=3))) == 3
    assert count_frames(video, max_frames=7) == 7


def test_truncated_video_counts_the_lost_frames(tmp_path):
    video = tmp_path / "clip.avi"
    write_video(video, 30, fps=10, size=(160, 120))
    data = video.read_bytes()
    # keep the header and index position intact enough to open, lose the tail of the frames
    (tmp_path / "cut.avi").write_bytes(data[:len(data) // 2])
    stats = FrameStats()
    frames = list(iter_frames(tmp_path / "cut.avi", stats=stats))
    # the container still announces 30 frames (OpenCV 4.x, the pinned range, reads the header);
    # every frame is either delivered or counted as skipped: none is silently lost
    assert count_frames(tmp_path / "cut.avi") == 30
    assert 0 < len(frames) < 30
    assert len(frames) + stats.skipped == 30 and stats.skipped > 0 and stats.read == len(frames)


def test_missing_and_unopenable_sources_name_themselves(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        list(iter_frames(tmp_path / "nope.mp4"))
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(OSError, match="bad.mp4"):
        list(iter_frames(bad))
    with pytest.raises(OSError, match="camera 97"):
        list(iter_frames("97"))
