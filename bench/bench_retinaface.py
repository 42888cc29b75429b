"""RetinaFace speed on this machine: forward ms/image (eager PyTorch and onnxruntime, each with
1 and 2 threads) for both backbones at square sizes, then the post-processing and the batched
training loss.

    python bench/bench_retinaface.py [--sizes 320 640] [--threads 1 2] [--repeat 3]
                                     [--backbones retinaface_mnet retinaface_r50] [--skip-onnx]

Weights are random (BatchNorm in eval mode); speed does not depend on them. The loss is timed
on a batch of 32 at 640x640 with 15 random faces per image (one image with 300).
"""
import argparse
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from bench.timing import timed
from models.retinaface.loss import RetinaFaceLoss
from models.retinaface.priors import detect_faces, prior_boxes
from models.retinaface.net import RetinaFace, export_retinaface_onnx

CPU = torch.device("cpu")


def bench_forward(name, sizes, threads, repeat, onnx):
    torch.manual_seed(0)
    net = RetinaFace(name).eval()
    sessions = {}
    if onnx:
        import onnxruntime as ort
        path = Path(tempfile.mkdtemp()) / f"{name}.onnx"
        export_retinaface_onnx(net, path)
        for n in threads:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = n, 1
            sessions[n] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    for size in sizes:
        x = torch.randn(1, 3, size, size) * 50
        for n in threads:
            torch.set_num_threads(n)
            with torch.inference_mode():
                net(x)
                eager = timed(lambda: net(x), repeat, CPU)
            line = f"{name:16s} {size}x{size} threads={n}: eager {eager * 1e3:7.1f} ms"
            if n in sessions:
                feed = {"image": x.numpy()}
                sessions[n].run(None, feed)
                ort_s = timed(lambda: sessions[n].run(None, feed), repeat, CPU)
                line += f"   onnxruntime {ort_s * 1e3:7.1f} ms"
            print(line, flush=True)


def bench_postprocess(repeat):
    size = (640, 640)
    priors = prior_boxes(size, [[16, 32], [64, 128], [256, 512]], [8, 16, 32])
    g = torch.Generator().manual_seed(0)
    P = len(priors)
    loc, landms = torch.randn(1, P, 4, generator=g) * 0.3, torch.randn(1, P, 10, generator=g)
    for tag, margin in (("typical", -6.0), ("worst", 0.0)):
        conf = torch.stack([torch.zeros(1, P), torch.randn(1, P, generator=g) + margin], -1)
        n = int((torch.softmax(conf, -1)[0, :, 1] > 0.02).sum())
        s = timed(lambda: detect_faces(loc, conf, landms, priors, size), repeat, CPU)
        print(f"post-processing 640x640 ({P} priors, {tag}: {n} above 0.02, top 5000): "
              f"{s * 1e3:.1f} ms", flush=True)


def bench_loss(repeat):
    size, B = (640, 640), 32
    priors = prior_boxes(size, [[16, 32], [64, 128], [256, 512]], [8, 16, 32])
    rng = np.random.default_rng(0)
    targets = []
    for b in range(B):
        n = 300 if b == 0 else 15
        wh = rng.uniform(4, 300, (n, 1)) / 640
        xy = rng.uniform(0, 1, (n, 2)) * (1 - wh)
        pts = np.repeat(xy, 5, 0).reshape(n, 10) + 0.01
        t = np.concatenate([xy, xy + wh, np.ones((n, 1)), pts], 1)
        targets.append(torch.tensor(t, dtype=torch.float32))
    g = torch.Generator().manual_seed(0)
    P = len(priors)
    out = SimpleNamespace(loc=torch.randn(B, P, 4, generator=g),
                          conf=torch.randn(B, P, 2, generator=g),
                          landms=torch.randn(B, P, 10, generator=g))
    loss = RetinaFaceLoss()
    for n in (1, 2):
        torch.set_num_threads(n)
        loss(out, targets, size)
        s = timed(lambda: loss(out, targets, size), repeat, CPU)
        print(f"loss, batch {B} at 640x640 ({sum(map(len, targets))} faces), threads={n}: "
              f"{s * 1e3:.1f} ms", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[320, 640])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--backbones", nargs="+", default=["retinaface_mnet", "retinaface_r50"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-onnx", action="store_true")
    args = ap.parse_args(argv)
    for name in args.backbones:
        bench_forward(name, args.sizes, args.threads, args.repeat, not args.skip_onnx)
    torch.set_num_threads(1)
    bench_postprocess(args.repeat)
    bench_loss(args.repeat)


if __name__ == "__main__":
    main()
