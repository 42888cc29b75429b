"""Draw a detector's faces (and landmarks, for detectors that have them) on one image.

    python tools/detect_image.py --weights W --image IMG [--out IMG_det.png] [--threshold 0.5]
        [--mode single|multi] [--scale S] [--enhance] [KEY.SUB=VALUE ...]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from data import config as config_lib  # noqa: E402
from data.image_folder import read_rgb  # noqa: E402
from models.enhancement import enhance_uint8, load_enhancer  # noqa: E402
from models.inference import build_face_detector  # noqa: E402
from models.test_time import Pass, TestTimeDetector, reference_passes  # noqa: E402
from utils import dist  # noqa: E402
from utils.visualize import draw_detections  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--weights", required=True)
    p.add_argument("--image", required=True, type=Path)
    p.add_argument("--out", type=Path, default=None, help="default: <image>_det.png")
    p.add_argument("--threshold", type=float, default=0.5, help="draw boxes above this score")
    p.add_argument("--mode", choices=["single", "multi"], default="single")
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--enhance", action="store_true", help="brighten with E(L) first "
                                                          "(ENHANCE.WEIGHTS) and draw on it")
    p.add_argument("opts", nargs="*", metavar="KEY.SUB=VALUE")
    args = p.parse_args(argv)
    cfg = config_lib.load_config(overrides=args.opts)
    device = dist.pick_device(cfg.RUN.DEVICE)
    rgb = read_rgb(args.image)
    if args.enhance:
        rgb = enhance_uint8(load_enhancer(cfg.ENHANCE.WEIGHTS, device), rgb)
    detector = build_face_detector(cfg, args.weights, device)
    # landmarks (YuNet, RetinaFace) are drawn in single mode; voting does not vote them
    tester = TestTimeDetector(detector, vote=args.mode == "multi", dummy_rows=False,
                              landmarks=args.mode == "single" and detector.num_landmarks > 0)
    plan = reference_passes(*rgb.shape[:2], args.scale) if args.mode == "multi" \
        else [Pass(args.scale)]
    with torch.no_grad():
        dets = tester([rgb], plan)[0]
    out = args.out or args.image.with_name(f"{args.image.stem}_det.png")
    draw_detections(rgb, dets, args.threshold).save(out)
    print(f"{int((dets[:, 4] >= args.threshold).sum())} faces >= {args.threshold} "
          f"(of {len(dets)} detections) drawn in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
