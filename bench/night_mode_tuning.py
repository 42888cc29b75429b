"""The photos on which night mode's ``auto`` rule was tuned (NOT the night benchmark's photos).

    python bench/night_mode_tuning.py [--weights ../shared/data/yunet/yunet_n.pth]
        [--enhance none gamma clahe auto ...] [--levels 0 0.8 0.1 ...] [--seeds 2]
        [--model yunet_n]

Scenes: ``skimage.data.astronaut()``, matplotlib's ``grace_hopper.jpg``, ``skimage.data.camera()``
and five 640x480 scenes made of a package photo (coffee, chelsea, rocket, coins, hubble) as the
background with 20 LFW faces each (``skimage.data.lfw_subset()``, the 100 faces, 25 px scaled
2-3.5x, their contrast varied). Ground truth: the released YuNet_n's own detections with score
>= 0.5 on the clean scenes, so the table asks "how much of what the detector finds in daylight
does it still find at night", AP at IoU 0.5 (the DARK FACE evaluator on arrays).

Darkening: the camera model ``data/camera.py`` (``darken_uint8``, preset ``darkface``, its
exposure fixed per level; level 0 = the clean scenes) when it is importable, else ``data/lowlight.py`` with its exposure
fixed per level and stronger noise. Prints AP per (level, enhancer), the mean luma and the
auto rule's decision statistics per level.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from data.config import load_config
from data.real_photos import load_real_photo
from evaluation.darkface import evaluate_darkface_boxes
from lowlevel.enhancers import build_enhancer, decide, luma
from models.inference import build_face_detector

ROOT = Path(__file__).resolve().parents[1]

BACKGROUNDS = ("coffee", "chelsea", "rocket", "coins", "hubble_deep_field")
SCENE_SIZE = (480, 640)
GT_SCORE = 0.5
CAMERA_LEVELS = (0.0, 1.6, 0.8, 0.4, 0.2, 0.1, 0.07, 0.05)   # darkface exposures; 0: clean
TOY_LEVELS = (0.12, 0.05, 0.02, 0.008, 0.004)        # data/lowlight.py exposures
TOY_NOISE = dict(shot_noise=(1 / 400, 1 / 100), read_noise=(0.002, 0.006))


def _face_scene(k: int) -> np.ndarray:
    """Background ``BACKGROUNDS[k]`` with LFW faces ``20k..20k+19`` pasted on a 4 x 5 grid."""
    from skimage import data
    rng = np.random.default_rng(100 + k)
    bg = getattr(data, BACKGROUNDS[k])()
    bg = np.repeat(bg[..., None], 3, 2) if bg.ndim == 2 else bg[..., :3]
    h, w = SCENE_SIZE
    img = cv2.resize(bg, (w, h), interpolation=cv2.INTER_AREA)
    faces = data.lfw_subset()[20 * k:20 * k + 20]
    for i, face in enumerate(faces):
        r, c = divmod(i, 5)
        side = int(25 * rng.uniform(2.0, 3.5))
        f = cv2.resize(face.astype(np.float32), (side, side), interpolation=cv2.INTER_CUBIC)
        f = np.clip((f - f.mean()) * rng.uniform(0.6, 1.1) + f.mean() * rng.uniform(0.5, 1.1),
                    0, 1)
        y = int(r * h / 4 + rng.integers(0, max(1, h // 4 - side)))
        x = int(c * w / 5 + rng.integers(0, max(1, w // 5 - side)))
        y, x = min(y, h - side), min(x, w - side)
        img[y:y + side, x:x + side] = (255 * f[..., None]).astype(np.uint8)
    return img


def scenes() -> dict[str, np.ndarray]:
    """name -> HxWx3 uint8 BGR."""
    out = {n: load_real_photo(n) for n in ("astronaut", "grace_hopper", "camera")}
    out.update({f"faces_{BACKGROUNDS[k]}": _face_scene(k) for k in range(len(BACKGROUNDS))})
    return {n: np.ascontiguousarray(rgb[..., ::-1]) for n, rgb in out.items()}


def darkener(levels):
    """``(fn(bgr, level, seed) -> bgr, level list, name)``: the camera model or the toy one."""
    try:
        from data import camera
        return (lambda bgr, lv, seed: camera.darken_uint8(bgr, "darkface", seed=seed,
                                                          overrides={"exposure": lv}),
                levels or CAMERA_LEVELS, "data/camera.py darkface")
    except (ImportError, AttributeError):
        from data.lowlight import simulate_low_light

        def toy(bgr, lv, seed):
            rgb = simulate_low_light(bgr[..., ::-1], np.random.default_rng(seed), exposure=lv,
                                     **TOY_NOISE)
            return np.ascontiguousarray(rgb[..., ::-1])
        return toy, levels or TOY_LEVELS, "data/lowlight.py, stronger noise"


def detect(detector, bgr: np.ndarray) -> np.ndarray:
    """Pixel rows ``x1 y1 x2 y2 score`` of the detector on one BGR image."""
    rgb = np.ascontiguousarray(bgr[..., ::-1])
    d = detector(rgb[None])[0][:, :5].numpy().astype(np.float64)
    h, w = bgr.shape[:2]
    d[:, :4] *= [w, h, w, h]
    return d


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--weights", default=str(ROOT.parent / "shared/data/yunet/yunet_n.pth"))
    ap.add_argument("--model", default="yunet_n")
    ap.add_argument("--enhance", nargs="+",
                    default=["none", "gamma", "clahe", "gamma_gauss", "clahe_gauss",
                             "clahe_median", "clahe_bilateral", "auto"])
    ap.add_argument("--levels", type=float, nargs="+", default=None)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--el-weights", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = load_config(overrides=[f"MODEL.NAME={args.model!r}"])
    detector = build_face_detector(cfg, args.weights, torch.device("cpu"))
    imgs = scenes()
    gt = {n: detect(detector, im) for n, im in imgs.items()}
    gt = {n: d[d[:, 4] >= GT_SCORE, :4] for n, d in gt.items()}
    print(f"{len(imgs)} scenes, {sum(len(g) for g in gt.values())} daylight faces (YuNet >= "
          f"{GT_SCORE})")
    fn, levels, how = darkener(args.levels)
    print(f"darkening: {how}; levels {levels}; {args.seeds} seeds")
    enhancers = {e: build_enhancer(e, args.el_weights) for e in args.enhance}
    table = {}
    for lv in levels:
        dark = {(n, s): im if lv == 0 else fn(im, lv, s)
                for n, im in imgs.items() for s in range(args.seeds)}
        means = [float(luma(d).mean()) for d in dark.values()]
        dec = [decide(d) for d in dark.values()]
        print(f"level {lv}: mean luma {np.mean(means):.1f} (min {min(means):.1f}, max "
              f"{max(means):.1f}); auto enhances {sum(d.enhance for d in dec)}/{len(dec)} "
              f"(blur 1.5 px: {sum(d.blur == 1.5 for d in dec)}), mean noise estimate "
              f"{np.mean([d.noise for d in dec]):.2f}")
        for e, enh in enhancers.items():
            t = time.perf_counter()
            preds = {f"{n}_{s}": detect(detector, enh(d)) for (n, s), d in dark.items()}
            g = {f"{n}_{s}": gt[n] for (n, s) in dark}
            table[lv, e] = evaluate_darkface_boxes(g, preds)["ap"]
            print(f"  {e:<16} AP {table[lv, e]:.3f}   ({time.perf_counter() - t:.1f} s)",
                  flush=True)
    print("\nAP per level (rows) and enhancer (columns)")
    print("level    " + " ".join(f"{e:>15}" for e in enhancers))
    for lv in levels:
        print(f"{lv:<8} " + " ".join(f"{table[lv, e]:15.3f}" for e in enhancers))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
