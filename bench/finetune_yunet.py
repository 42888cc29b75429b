"""Fine-tune the released YuNet_n on the demo data through train.py, then check real photos.

    python bench/finetune_yunet.py [--data demo_data] [--out runs/finetune_yunet]
                                   [--steps 300] [--batch 8] [--size 320]
                                   [--config configs/finetune_yunet.yaml] [KEY.SUB=VALUE ...]
                                   [--shared-data ../shared/data] [--eval-only]

1. The demo's clean training images (``tools/make_demo_data.py --out DATA``, made when DATA has
   no ``wider_face_train.txt``): faces of the astronaut, Grace Hopper and 80 LFW identities
   pasted on textured backgrounds, boxes only (no landmarks).
2. ``train.py`` as a subprocess: ``MODEL.NAME=yunet_n``, ``MODEL.WEIGHTS=<shared>/yunet/
   yunet_n.pth``, detection only (``configs/detection_only.yaml``), ``--steps`` steps of
   ``--batch`` images at ``YUNET.INPUT_SIZE=--size``, then every ``--config`` preset and
   override given here (e.g. ``configs/finetune_yunet.yaml``).
3. Real photos before and after: ``skimage.data.astronaut()``, ``camera()``, matplotlib's
   ``grace_hopper.jpg``, the 100-face LFW mosaic of tests/test_yunet.py, and their simulated
   low-light copies (``data/lowlight.py``, seeded), plus two photos without a face (the cat
   ``chelsea()``, ``coffee()``). The reference faces are the released model's detections with
   score >= 0.5 on the clean photos (103 faces); *recall* is the fraction of them that a model
   finds (a detection with score >= 0.5 at IoU >= 0.5, one to one), on the clean photos and on
   the low-light copies (same reference boxes); *extra* counts its other detections with score
   >= 0.5 (on the face-free photos: false positives). The mean score of the matched faces
   shows calibration drift.

Note: the demo's training faces include the astronaut, Grace Hopper and LFW identities 0-79,
so the photos are not unseen faces; the point is whether a few hundred steps on composites
damage what the released weights do on real photos.
"""
import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from bench.bench_amp import match, real_photos
from data.config import load_config
from models.registry import build_net
from models.inference import FaceDetector, load_net
from models.yunet.net import load_yunet_weights

ROOT = Path(__file__).resolve().parents[1]

KEEP = 0.5


def ensure_demo_data(folder: Path) -> Path:
    if not (folder / "wider_face_train.txt").is_file():
        print(f"making the demo data in {folder}", flush=True)
        subprocess.run([sys.executable, str(ROOT / "tools" / "make_demo_data.py"), "--out",
                        str(folder)], check=True, cwd=ROOT)
    return folder


def fine_tune(args, released: Path) -> Path:
    run = args.out / "run"
    cmd = [sys.executable, str(ROOT / "train.py"), "--config",
           str(ROOT / "configs" / "detection_only.yaml")]
    for preset in args.config:
        cmd += ["--config", str(preset)]
    cmd += ["MODEL.NAME=yunet_n", f"MODEL.WEIGHTS={released}",
            f"FACE.SRC_TRAIN_FILE={args.data / 'wider_face_train.txt'}",
            f"FACE.DATA_ROOT={args.data}", f"SOLVER.MAX_STEPS={args.steps}",
            f"SOLVER.BATCH_SIZE={args.batch}", f"YUNET.INPUT_SIZE={args.size}",
            f"RUN.OUTPUT_DIR={args.out}", "RUN.NAME=run", "RUN.TENSORBOARD=False",
            f"RUN.LOG_EVERY={max(args.steps // 10, 1)}", f"RUN.CKPT_EVERY={args.steps}",
            *args.opts]
    if (run / "model_final.pth").is_file():
        print(f"{run / 'model_final.pth'} exists: not training again (delete it to retrain)")
        return run / "model_final.pth"
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    return run / "model_final.pth"


def detections(det: FaceDetector, photos: dict) -> dict[str, np.ndarray]:
    out = {}
    for name, rgb in photos.items():
        h, w = rgb.shape[:2]
        rows = det(rgb[None])[0].double().numpy() * np.array([w, h, w, h, 1] + [w, h] * 5)
        out[name] = rows[rows[:, 4] >= KEEP]
    return out


def scores(found: dict, reference: dict) -> dict[str, tuple]:
    """Per group (clean, low light, no face): matched, reference count, extra, mean score."""
    groups = {"clean": [], "low light": [], "no face": []}
    for name, rows in found.items():
        base = name.removesuffix(" (low light)")
        group = "no face" if base not in reference else (
            "low light" if name.endswith("(low light)") else "clean")
        ref = reference.get(base, np.zeros((0, 15)))
        pairs = match(ref, rows)
        groups[group].append((len(pairs), len(ref), len(rows) - len(pairs),
                              [rows[j, 4] for _, j, _ in pairs]))
    return {g: (sum(r[0] for r in v), sum(r[1] for r in v), sum(r[2] for r in v),
                float(np.mean([s for r in v for s in r[3]])) if any(r[3] for r in v) else 0.0)
            for g, v in groups.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT / "demo_data")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "finetune_yunet")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--config", action="append", default=[], type=Path)
    ap.add_argument("--shared-data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--eval-only", type=Path, default=None,
                    help="skip training: compare these fine-tuned weights")
    ap.add_argument("opts", nargs="*", metavar="KEY.SUB=VALUE")
    args = ap.parse_args(argv)
    released = args.shared_data / "yunet" / "yunet_n.pth"
    if not released.is_file():
        raise SystemExit(f"{released} not found: the released weights are needed (--shared-data)")
    if args.eval_only:
        tuned = args.eval_only
    else:
        args.data = ensure_demo_data(args.data)
        tuned = fine_tune(args, released)

    import skimage.data
    photos = real_photos()
    photos["chelsea"], photos["coffee"] = skimage.data.chelsea(), skimage.data.coffee()
    cfg = load_config(overrides=["MODEL.NAME='yunet_n'"])
    net = build_net(cfg)
    load_yunet_weights(net, released)
    before = detections(FaceDetector.from_config(net, cfg, torch.device("cpu")), photos)
    reference = {k: v for k, v in before.items() if "(low light)" not in k and len(v)}
    tuned_net, _ = load_net(load_config(overrides=["MODEL.NAME='yunet_n'"]), tuned)
    after = detections(FaceDetector.from_config(tuned_net, cfg, torch.device("cpu")), photos)
    print(f"\nreference: the released model's {sum(map(len, reference.values()))} faces at score "
          f">= {KEEP} on the clean photos; fine-tuned: {tuned}")
    print("| model | clean recall | low-light recall | extra (faces photos) | false positives "
          "(chelsea, coffee) | mean matched score clean / low light |")
    print("|---|---|---|---|---|---|")
    for label, found in (("released", before), ("fine-tuned", after)):
        s = scores(found, reference)
        (mc, nc, xc, sc), (ml, nl, xl, sl), (_, _, fp, _) = (s["clean"], s["low light"],
                                                             s["no face"])
        print(f"| {label} | {mc}/{nc} ({100 * mc / nc:.1f}%) | {ml}/{nl} ({100 * ml / nl:.1f}%)"
              f" | {xc + xl} | {fp} | {sc:.3f} / {sl:.3f} |")
    per_photo = " ".join(f"{k}: {len(before[k])}->{len(after[k])}" for k in photos)
    print(f"detections >= {KEEP} per photo (released -> fine-tuned): {per_photo}")


if __name__ == "__main__":
    main()
