"""Time one full training step of train.py on synthetic batches: detection + the SSL tasks.

    python bench/train_step.py [--batch 8] [--ssl-batch 8] [--size 640] [--width 1.0]
                               [--device cpu|cuda] [--amp none|bf16|fp16] [--channels-last]
                               [--tasks default|none|JIGSAW_33,...] [--jig-size 192]
                               [--view-size 256] [--steps 5] [--warmup 2] [--threads N]

A step is what train.py does (data loading excluded): the trainer forward (detection forward,
then the task images through the detector's feature mode, one pass per input size, MoCo key
encoders, heads), the detection loss, the weighted sum, the engine's finite-loss check,
backward, its finite-gradient-norm check, SGD step. With the default
tasks (JIGSAW_33, CONTRASTIVE_TARGET, TRANSFER_CONTRASTIVE) each step carries, per process,
``batch`` detection images plus 2 x ``ssl-batch`` puzzles and 2 x ``ssl-batch`` MoCo pairs.

The script times the detection-only step and the full step in one process (``--tasks none``
only the former) and prints seconds per step, detection images per second, the cost of the
SSL part relative to the detection step, and peak memory (CUDA: max allocated; CPU: the
process's peak resident set, which also counts the Python runtime and the weights).
"""
from __future__ import annotations

import argparse
import resource

import torch

from data.config import default_config
from models.dsfd.loss import ProgressiveAnchorLoss
from models.dsfd.net import DSFD
from adapt.hla.trainer import HLATrainer
from models.inference import autocast
from adapt.hla.tasks import SSL_TASKS, ContrastiveTask, RotationTask, build_tasks
from bench.timing import timed
from engine import run as engine


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batch", type=int, default=8, help="detection images per step")
    ap.add_argument("--ssl-batch", type=int, default=8, help="images per SSL stream per step")
    ap.add_argument("--size", type=int, default=640, help="detection image side")
    ap.add_argument("--width", type=float, default=1.0, help="MODEL.WIDTH")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"))
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--tasks", default="default",
                    help="'default' (the config toggles), 'none', or toggles separated by commas")
    ap.add_argument("--jig-size", type=int, default=192, help="puzzle side (192 in training)")
    ap.add_argument("--view-size", type=int, default=256, help="MoCo view side (256)")
    ap.add_argument("--faces", type=int, default=10, help="faces per detection image")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--flops", action="store_true",
                    help="also count the FLOPs of one step (forward + backward) per mode: a "
                         "measure of the SSL share that load on a shared machine cannot skew")
    return ap.parse_args(argv)


def task_config(spec: str):
    cfg = default_config()
    if spec != "default":
        chosen = set() if spec == "none" else set(spec.split(","))
        unknown = chosen - set(SSL_TASKS)
        if unknown:
            raise SystemExit(f"unknown task toggles {sorted(unknown)}; known: {sorted(SSL_TASKS)}")
        for toggle in SSL_TASKS:
            cfg.TRAIN[toggle] = toggle in chosen
    return cfg


def ssl_batches(tasks, n, jig_size, view_size, device, memory_format, gen):
    """Random normalised images (and labels) for every stream of every task."""
    def img(size):
        x = torch.randn(n, 3, size, size, generator=gen) * 60
        return x.to(device).contiguous(memory_format=memory_format)

    batches = {}
    for task in tasks:
        for stream in task.streams:
            if isinstance(task, ContrastiveTask):
                batches[stream] = [img(view_size), img(view_size)]
            else:
                size = view_size if isinstance(task, RotationTask) else jig_size
                labels = torch.randint(task.num_classes, (n,), generator=gen).to(device)
                batches[stream] = [img(size), labels]
    return batches


def detection_batch(n, size, faces, device, memory_format, gen):
    x = (torch.randn(n, 3, size, size, generator=gen) * 60).to(device)
    targets = []
    for _ in range(n):
        side = torch.exp(torch.empty(faces).uniform_(2.0, 5.5, generator=gen)) / size   # 7-245 px
        xy = torch.rand(faces, 2, generator=gen) * (1 - side[:, None])
        boxes = torch.cat([xy, xy + side[:, None], torch.ones(faces, 1)], 1).clamp(max=1)
        targets.append(boxes.to(device))
    return x.contiguous(memory_format=memory_format), targets


def train_step(trainer, criterion, optimizer, named_params, images, targets, batches, amp,
               device):
    """One step as train.py takes it, the engine's non-finite checks included; returns the
    loss dict."""
    with autocast(device, amp):
        out, ssl_losses = trainer(images, batches)
    loss_dict = {**criterion(out, targets, tuple(images.shape[-2:])), **ssl_losses}
    loss = sum(trainer.loss_weights.get(k, 1.0) * v for k, v in loss_dict.items())
    engine.check_loss(0, loss, loss_dict, device)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    engine.check_gradients(0, named_params, loss_dict)
    optimizer.step()
    return loss_dict


def time_steps(step, args, device) -> float:
    """Median seconds of ``args.steps`` steps after ``args.warmup``."""
    return timed(step, args.steps, device, warmup=args.warmup)


def count_flops(step) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024      # Linux: KiB


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    gen = torch.Generator().manual_seed(0)
    cfg = task_config(args.tasks)
    torch.manual_seed(0)
    net = DSFD(width=args.width)
    modes = [("detection only", [])]
    tasks = build_tasks(cfg)
    if tasks:
        modes.append(("detection + " + " + ".join(t.toggle for t in tasks), tasks))
    images, targets = detection_batch(args.batch, args.size, args.faces, device, memory_format,
                                      gen)
    criterion = ProgressiveAnchorLoss(cfg.ANCHOR, cfg.FACE.OVERLAP_THRESH, cfg.LOSS.NEG_POS_RATIOS)
    print(f"device {device} ({torch.get_num_threads()} threads), width {args.width}, "
          f"amp {args.amp}, channels_last {args.channels_last}; detection {args.batch} x "
          f"{args.size}^2, SSL {args.ssl_batch} per stream (puzzles {args.jig_size}^2, views "
          f"{args.view_size}^2)")
    results = {}
    for label, mode_tasks in modes:
        trainer = HLATrainer(net, mode_tasks).to(device, memory_format=memory_format).train()
        named_params = [(n, p) for n, p in trainer.named_parameters() if p.requires_grad]
        optimizer = torch.optim.SGD([p for _, p in named_params], lr=1e-6, momentum=0.9,
                                    weight_decay=5e-4)
        batches = ssl_batches(mode_tasks, args.ssl_batch, args.jig_size, args.view_size, device,
                              memory_format, gen)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        def step():
            train_step(trainer, criterion, optimizer, named_params, images, targets, batches,
                       args.amp, device)

        sec = time_steps(step, args, device)
        flops = count_flops(step) if args.flops else float("nan")
        results[label] = (sec, flops)
        n_ssl = sum(b[0].shape[0] * (2 if len(b) == 2 and b[1].dim() == 4 else 1)
                    for b in batches.values())
        print(f"{label:60s} {sec:8.3f} s/step  {args.batch / sec:8.2f} detection img/s  "
              f"({n_ssl} SSL images per step)  peak memory {peak_memory_mb(device):9.0f} MiB"
              + (f"  {flops / 1e9:9.1f} GFLOP/step" if args.flops else ""))
    if len(results) == 2:
        (det, det_flops), (full, full_flops) = results.values()
        print(f"SSL part: {full - det:.3f} s/step = {(full - det) / det:.2f} x the detection step"
              + (f"; {(full_flops - det_flops) / det_flops:.2f} x its FLOPs" if args.flops
                 else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
