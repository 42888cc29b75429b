"""Cost of night mode: ms per 640x480 image for every enhancer of lowlevel/enhancers.py, on a
bright and on a dark image, next to the released YuNet_n's inference time on the same image.

    python bench/bench_night_mode.py [--size 480x640] [--repeat 20] [--threads 1]
        [--weights ../shared/data/yunet/yunet_n.pth] [--skip lime gamma_nlm]

The dark image is a package photo darkened by the camera model (``data/camera.py``, preset
``darkface``, exposure 0.1) so that ``auto`` takes its dark branch; the bright one is the photo
itself (``auto`` returns it untouched). YuNet_n: ``FaceDetector`` (uint8 RGB in, detections out:
pre-processing, forward, decoding and NMS). CPU timings on a shared machine are noisy.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch

from bench.timing import timed
from lowlevel.enhancers import ENHANCE_CHOICES, build_enhancer, decide

ROOT = Path(__file__).resolve().parents[1]

CPU = torch.device("cpu")


def images(h: int, w: int) -> dict[str, np.ndarray]:
    from data.real_photos import load_real_photo
    bright = cv2.resize(load_real_photo("astronaut")[..., ::-1], (w, h),
                        interpolation=cv2.INTER_AREA)
    try:
        from data.camera import darken_uint8
        dark = darken_uint8(bright, "darkface", seed=0, overrides={"exposure": 0.1})
    except ImportError:                                 # before the camera model
        from data.lowlight import simulate_low_light
        dark = simulate_low_light(bright[..., ::-1], np.random.default_rng(0))[..., ::-1]
    return {"bright": np.ascontiguousarray(bright), "dark": np.ascontiguousarray(dark)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", default="480x640", help="HxW")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--weights", default=str(ROOT.parent / "shared/data/yunet/yunet_n.pth"))
    ap.add_argument("--skip", nargs="*", default=["el"],
                    help="enhancers not timed (el needs weights)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    h, w = map(int, args.size.split("x"))
    imgs = images(h, w)
    print(f"{h}x{w}, {args.threads} thread(s), median of {args.repeat}; ms per image")
    for kind, img in imgs.items():
        d = decide(img)
        print(f"{kind}: mean luma {d.mean:.1f}, noise {d.noise:.2f}; auto: "
              + ("unchanged" if d.passthrough else f"blur {d.blur} px + CLAHE"))
    if Path(args.weights).is_file():
        from data.config import load_config
        from models.inference import build_face_detector
        det = build_face_detector(load_config(overrides=["MODEL.NAME='yunet_n'"]),
                                  args.weights, CPU)
        rgb = np.ascontiguousarray(imgs["dark"][None, ..., ::-1])
        det(rgb)
        ms = 1000 * timed(lambda: det(rgb), args.repeat, CPU)
        print(f"{'YuNet_n inference':<22} {ms:8.2f}")
    else:
        print(f"YuNet_n not timed: {args.weights} is missing")
    print(f"{'enhancer':<22} {'bright':>8} {'dark':>8}")
    for name in ENHANCE_CHOICES:
        if name in args.skip:
            continue
        fn = build_enhancer(name)
        rep = 2 if name in ("lime", "gamma_nlm") else args.repeat
        row = [1000 * timed(lambda: fn(img), rep, CPU) for img in imgs.values()]
        print(f"{name:<22} {row[0]:8.2f} {row[1]:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
