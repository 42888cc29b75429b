"""Speed of the reference's test-time protocol on 720x1080 (DARK FACE-sized) images.

    python bench/bench_test_time.py [--width 0.25] [--images 2] [--batch 1] [--device cpu|cuda]
                                    [--amp none|bf16|fp16] [--channels-last] [--mode multi|single]

Times the whole multi-scale pass plan (11 forward passes per image: 1, flipped 1, 0.5, 0.75, 2,
1.5, 3, 0.25, 1.25, 1.75, 2.25) with post-processing and box voting, and box voting alone on
the union it produced. Random weights with a face-class bias stand in for a trained detector
(so voting sees thousands of boxes, as with a real one).
"""
import argparse
import time

import numpy as np
import torch

from data.config import default_config
from layers.box_voting import box_vote
from models.dsfd.net import DSFD
from models.inference import FaceDetector
from models.test_time import Pass, TestTimeDetector, reference_passes


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--mode", choices=["multi", "single"], default="multi")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    cfg = default_config()
    torch.manual_seed(0)
    net = DSFD(width=args.width)
    with torch.no_grad():
        for conv in net.conf_pal2:
            conv.bias[1] -= 1.5                  # a few hundred detections per pass
    det = FaceDetector(net, cfg.ANCHOR, cfg.DETECT, cfg.AUG.img_mean, device, args.amp,
                       args.channels_last)
    tester = TestTimeDetector(det, vote=args.mode == "multi", dummy_rows=True)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (720, 1080, 3), dtype=np.uint8) for _ in range(args.images)]
    plan = reference_passes(720, 1080) if args.mode == "multi" else [Pass(1.0)]
    tester(images[:1], plan)                                           # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(0, len(images), args.batch):
        results = tester(images[i:i + args.batch], plan)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    per_pass = [tester.run_pass(images[:1], p)[0] for p in plan]
    union = np.concatenate(per_pass)
    t = time.perf_counter()
    box_vote(union)
    t_vote = time.perf_counter() - t
    print(f"device={device} threads={torch.get_num_threads()} width={args.width} "
          f"mode={args.mode} passes={len(plan)} amp={args.amp} batch={args.batch}")
    print(f"720x1080: {len(images) / seconds:.3f} images/s ({seconds / len(images):.2f} s per "
          f"image, {len(results[-1])} final boxes); box voting of {len(union)} boxes: "
          f"{t_vote * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
