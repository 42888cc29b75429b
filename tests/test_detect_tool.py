"""tools/detect.py on a folder, a list file and a short video written here; batched == one by
one; ONNX files; the precision resolver and BatchNorm folding it relies on."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from data.config import load_config
from models.registry import build_net
from models.inference import FaceDetector, fold_batchnorm
from tools import detect
from utils.precision import resolve_precision


def read_jsonl(path: Path) -> dict:
    return {r["name"]: r for r in map(json.loads, path.read_text().splitlines())}


def rows(record) -> np.ndarray:
    return np.array([d["box"] + [d["score"]] for d in record["detections"]]).reshape(-1, 5)


def same_detections(a: dict, b: dict, tol: float = 2e-3, min_score: float = 0.05) -> None:
    """The same frames, and for each the same detections of score >= ``min_score`` (order
    among near-equal scores aside; the JSON rounds to 1e-3 px), each within ``tol``."""
    assert a.keys() == b.keys()
    for name in a:
        ra, rb = rows(a[name]), rows(b[name])
        ra, rb = ra[ra[:, 4] >= min_score], rb[rb[:, 4] >= min_score]
        assert ra.shape == rb.shape, name
        if len(ra):
            diff = np.abs(ra[:, None] - rb[None]).max(-1)          # [A, B]
            assert (diff.min(1) <= tol).all() and (diff.min(0) <= tol).all(), name


def resized_photos(shared: Path, folder: Path, size=(320, 240)) -> list[Path]:
    """Same-sized copies (in tmp) of four dlib photos, so that they batch together."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for src in sorted((shared / "dlib_faces").glob("*.jpg"))[:4]:
        out.append(folder / f"{src.stem}.png")
        cv2.imwrite(str(out[-1]), cv2.resize(cv2.imread(str(src)), size,
                                             interpolation=cv2.INTER_AREA))
    return out


def yunet_args(shared: Path, inp, out, *extra) -> list[str]:
    return ["--weights", str(shared / "yunet" / "yunet_n.pth"), "--model", "yunet_n",
            "--input", str(inp), "--output", str(out), "--no-progress", *extra]


def test_folder_batched_equals_one_by_one_and_writes_every_format(shared_data, tmp_path,
                                                                  capsys):
    photos = resized_photos(shared_data, tmp_path / "imgs")
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"not an image")
    for batch, precision in ((1, "fp32"), (4, "fp32"), (4, "auto")):
        out = tmp_path / f"b{batch}_{precision}"
        argv = yunet_args(shared_data, tmp_path / "imgs", out, "--batch", str(batch),
                          "--precision", precision, "--format", "jsonl", "--format",
                          "darkface", "--format", "wider", "--save-vis")
        assert detect.main(argv) == 0
        assert "1 unreadable frames skipped" in capsys.readouterr().out
    ref = read_jsonl(tmp_path / "b1_fp32" / "detections.jsonl")
    assert len(ref) == 4
    for other in ("b4_fp32", "b4_auto"):
        same_detections(ref, read_jsonl(tmp_path / other / "detections.jsonl"))
    # real faces: every photo has confident faces with 5 landmarks each
    for record in ref.values():
        confident = [d for d in record["detections"] if d["score"] >= 0.5]
        assert confident and all(len(d["landmarks"]) == 5 for d in confident)
    # the txt formats hold the same boxes (DARK FACE corners, WIDER x y w h)
    name = str(photos[0])
    corners = np.loadtxt(tmp_path / "b1_fp32" / "darkface" / f"{photos[0].stem}.txt",
                         ndmin=2)
    np.testing.assert_allclose(corners, rows(ref[name]), atol=2e-3)
    wider = (tmp_path / "b1_fp32" / "wider" / "imgs" / f"{photos[0].stem}.txt").read_text()
    lines = wider.splitlines()
    assert lines[0] == photos[0].stem and int(lines[1]) == len(corners)
    xywh = np.array([[float(v) for v in line.split()] for line in lines[2:]]).reshape(-1, 5)
    np.testing.assert_allclose(xywh[:, 2:4], corners[:, 2:4] - corners[:, :2], atol=1e-6)
    vis = cv2.imread(str(tmp_path / "b1_fp32" / "vis" / f"{photos[0].stem}.jpg"))
    assert vis.shape == (240, 320, 3)


def test_detect_equals_the_face_detector_and_the_official_onnx(shared_data, tmp_path):
    photos = resized_photos(shared_data, tmp_path / "imgs")
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{p}\n" for p in photos[:2]))
    assert detect.main(yunet_args(shared_data, listing, tmp_path / "pt", "--precision",
                                  "fp32", "--landmarks", "--format", "darkface")) == 0
    cfg = load_config(overrides=["MODEL.NAME='yunet_n'"])
    from models.yunet.net import load_yunet_weights
    net = build_net(cfg)
    load_yunet_weights(net, shared_data / "yunet" / "yunet_n.pth")
    det = FaceDetector.from_config(net, cfg, torch.device("cpu"))
    for p in photos[:2]:
        rgb = cv2.imread(str(p))[..., ::-1].copy()
        d = det(rgb[None])[0].double().numpy() * np.array([320, 240] * 2 + [1] + [320, 240] * 5)
        got = np.loadtxt(tmp_path / "pt" / "darkface" / f"{p.stem}.txt", ndmin=2)
        np.testing.assert_allclose(got, d, rtol=0, atol=1e-9)     # the exact reference path
    onnx = shared_data / "yunet" / "yunet_n_dynamic.onnx"
    assert detect.main(["--weights", str(onnx), "--model", "yunet_n", "--input", str(listing),
                        "--output", str(tmp_path / "onnx"), "--no-progress"]) == 0
    assert detect.main(yunet_args(shared_data, listing, tmp_path / "pt2")) == 0
    same_detections(read_jsonl(tmp_path / "pt2" / "detections.jsonl"),
                    read_jsonl(tmp_path / "onnx" / "detections.jsonl"), tol=0.05)


def write_face_video(path: Path, n: int = 6, fps: float = 5.0) -> None:
    """The astronaut photo panned a few pixels per frame, 256 x 256, MJPG."""
    import skimage.data
    photo = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (256, 256))
    for i in range(n):
        w.write(np.ascontiguousarray(photo[10 + 4 * i:266 + 4 * i, 80:336]))
    w.release()


def test_video_sampled_with_annotated_video(shared_data, tmp_path, capsys):
    video = tmp_path / "clip.avi"
    write_face_video(video)
    assert detect.main(yunet_args(shared_data, video, tmp_path / "out", "--every", "0.4",
                                  "--batch", "2", "--save-vis", "--format", "wider",
                                  "--format", "jsonl")) == 0
    assert "3 frames" in capsys.readouterr().out
    records = read_jsonl(tmp_path / "out" / "detections.jsonl")
    assert list(records) == [f"clip/clip_{i:06d}" for i in (0, 2, 4)]
    for i, record in zip((0, 2, 4), records.values()):
        best = rows(record)[0]
        assert best[4] > 0.8          # the astronaut's face, moving up 4 px per frame
        # (178.1, 65.0) is the face's corner in the full photo: x - 80, y - 10 - 4i here
        assert abs(best[0] - 98) < 6 and abs(best[1] - (55 - 4 * i)) < 6
    assert (tmp_path / "out" / "wider" / "clip" / "clip_000002.txt").is_file()
    written = next((tmp_path / "out").glob("clip_det.*"))
    cap = cv2.VideoCapture(str(written))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 3


@pytest.mark.parametrize("name", ["retinaface_mnet", "dsfd_vgg"])
def test_random_weight_families_batch_equals_single(tmp_path, name):
    torch.manual_seed(0)
    overrides = [f"MODEL.NAME={name!r}"] + (["MODEL.WIDTH=0.125"] if name == "dsfd_vgg" else [])
    cfg = load_config(overrides=overrides)
    net = build_net(cfg)
    torch.save({"model": net.state_dict(), "config": {"MODEL": dict(cfg.MODEL)}},
               tmp_path / "w.pth")
    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        cv2.imwrite(str(tmp_path / "imgs" / f"{i}.png"),
                    rng.integers(0, 256, (96, 128, 3), dtype=np.uint8))
    results = []
    for batch in (1, 3):
        out = tmp_path / f"b{batch}"
        assert detect.main(["--weights", str(tmp_path / "w.pth"), "--input",
                            str(tmp_path / "imgs"), "--output", str(out), "--batch", str(batch),
                            "--no-progress", *overrides, "DETECT.CONF_THRESH=0.3"]) == 0
        results.append(read_jsonl(out / "detections.jsonl"))
    same_detections(*results)
    assert sum(len(r["detections"]) for r in results[0].values()) > 0


def test_missing_input_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.mp4"):
        detect.main(["--weights", "w.pth", "--input", str(tmp_path / "nowhere.mp4"),
                     "--output", str(tmp_path / "o")])


def test_precision_rules_and_folded_batchnorm():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu, "yunet").amp == "none"
    assert not resolve_precision("fp32", cpu, "yunet").fold_bn
    for family in ("dsfd", "yunet", "retinaface"):         # the reference protocol stays exact
        p = resolve_precision("auto", cpu, family, reference=True)
        assert (p.amp, p.channels_last, p.fold_bn) == ("none", False, False)
    assert resolve_precision("auto", cpu, "dsfd").name == "fp32"
    with pytest.raises(ValueError, match="--precision"):
        resolve_precision("fp16", cpu)
    cfg = load_config(overrides=["MODEL.NAME='retinaface_mnet'"])
    torch.manual_seed(0)
    net = build_net(cfg).eval()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    folded = fold_batchnorm(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())   # left as it was
    x = torch.randn(2, 3, 64, 96) * 50
    with torch.no_grad():
        for a, b in zip(net(x)[:3], folded(x)[:3]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
