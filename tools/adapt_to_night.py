"""Adapt a trained face detector to your own night footage, without labels (self-training).

    python tools/adapt_to_night.py --weights W --model NAME --images NIGHT_DIR_OR_VIDEO --out RUN
        [--every 1.0] [--max-frames N] [--enhance auto] [--labelled FILE [--labelled-format F]
        [--labelled-root DIR]] [--resume auto] [--overwrite] [--config PRESET] [KEY.SUB=VALUE ...]

``--images``: an image, a folder, a list file, a video (one frame every ``--every`` seconds) or
a camera index (with ``--max-frames``). The preset ``configs/adapt_to_night.yaml`` is applied
first (then ``--config`` files, the flags and the overrides). What happens (docs/NIGHT.md,
"Adapting to your footage"; adapt/pseudo/night.py and night_student.py):

1. the frames are extracted into ``RUN/frames/`` with their night-mode copies (``--enhance``,
   default auto: lowlevel/enhancers.py); every k-th frame is held out (ADAPT.HOLDOUT);
2. the detector in night mode (raw and night-mode copy, flipped, ADAPT.SCALES, fused) labels the
   training frames: score >= PSEUDO.HIGH faces, [PSEUDO.LOW, PSEUDO.HIGH) ignore regions;
3. the student (the detector, from --weights) trains ADAPT.ROUND_STEPS steps on the night frames
   in a strong view, on camera-model darkened copies of the confident frames and, with
   ``--labelled``, on labelled daylight images; an EMA mean teacher follows it and labels the
   frames again at the start of every round;
4. after every round the held-out numbers are measured (the score: faces per frame found by
   both the adapted detector's plain pass and its night-mode teacher, scores down to
   PSEUDO.LOW; also the teacher-student agreement and the confident faces); a better score writes
   ``RUN/adapted.pth``; the run stops after ADAPT.PATIENCE rounds without improvement or
   ADAPT.MAX_ROUNDS rounds. With ``ADAPT.STUDENT_INPUT=enhanced`` the student trains and is
   measured on the night-mode copies: the adapted detector is meant to run behind
   ``--enhance`` (the same enhancer);
5. at the end: ``RUN/adapted.onnx`` (checked with onnxruntime) and ``RUN/report.md`` /
   ``report.html`` with the numbers before and after and example frames in ``RUN/examples/``.

One process (GPU or CPU) or ``torchrun --nproc_per_node=N tools/adapt_to_night.py ...`` (DDP).
The run folder is the engine's (engine/run.py): a lock, atomic checkpoints, ``--resume auto``
continues exactly (the same flags), a NaN stops the run naming the loss terms.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from adapt.pseudo.night import (SCORE_KEY, STUDENT_INPUTS, FrameSet,
                                NightTeacher, collect_frames, holdout_metrics, label_frames,
                                round_labels, student_view)
from adapt.pseudo.night_report import example_image, write_report
from adapt.pseudo.night_student import (build_loaders, enhanced_records,
                                        labelled_records, next_batch, night_records,
                                        synth_records)
from data import config as config_lib
from data.config import ConfigError
from data.media import source_kind
from lowlevel.enhancers import add_enhance_argument, build_enhancer, rule_from_config
from adapt.pseudo.ema import ModelEMA, unwrap
from models.registry import entry_of
from models.inference import FaceDetector, autocast, load_net
from utils import dist
from engine import run as engine
from engine.step import build_optimizer
from utils.checkpoint import load_file
from utils.logger import setup_logging
from utils.schedule import ReferenceSchedule

ROOT = Path(__file__).resolve().parents[1]

log = logging.getLogger("adapt_to_night")
PRESET = ROOT / "configs" / "adapt_to_night.yaml"
ADAPTED, ONNX = "adapted.pth", "adapted.onnx"


def parse_args(argv=None):
    p = engine.run_arguments(__doc__)
    p.add_argument("--weights", required=True, help="the detector to adapt (MODEL.WEIGHTS)")
    p.add_argument("--model", default=None, help="its MODEL.NAME (e.g. yunet_n; default: the "
                                                 "checkpoint's or the config's)")
    p.add_argument("--images", required=True,
                   help="night footage: image, folder, list file, video or camera index")
    p.add_argument("--out", required=True, help="the run folder")
    p.add_argument("--every", type=float, default=None, help="seconds between video frames")
    p.add_argument("--max-frames", type=int, default=None, help="frames to take (0: all)")
    p.add_argument("--labelled", default=None, help="labelled daylight images (annotations)")
    p.add_argument("--labelled-format", default=None, help="their format (default auto)")
    p.add_argument("--labelled-root", default=None, help="their image root")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_enhance_argument(p, default=None)
    return p.parse_args(argv)


def to_overrides(args) -> list[str]:
    """The flags as config overrides (before the user's own)."""
    out = Path(args.out)
    pairs = [("MODEL.WEIGHTS", args.weights), ("MODEL.NAME", args.model),
             ("ADAPT.IMAGES", args.images), ("RUN.OUTPUT_DIR", str(out.parent)),
             ("RUN.NAME", out.name), ("ADAPT.EVERY", args.every),
             ("ADAPT.MAX_FRAMES", args.max_frames), ("ADAPT.LABELLED", args.labelled),
             ("ADAPT.LABELLED_FORMAT", args.labelled_format),
             ("ADAPT.LABELLED_ROOT", args.labelled_root), ("ADAPT.ENHANCE", args.enhance)]
    return [f"{k}={v}" for k, v in pairs if v is not None]


def check_inputs(args) -> None:
    """Clear errors for what the user gave, before anything is built."""
    if not Path(args.weights).is_file():
        raise FileNotFoundError(f"--weights {args.weights}: no such file")
    source_kind(args.images)                     # raises naming a missing source
    if args.labelled is not None and not Path(args.labelled).exists():
        raise FileNotFoundError(f"--labelled {args.labelled}: no such file or folder")


def check_config(cfg) -> None:
    a = cfg.ADAPT
    for key in ("ROUND_STEPS", "MAX_ROUNDS", "PATIENCE"):
        if a[key] <= 0:
            raise ConfigError(f"config key ADAPT.{key}={a[key]} must be > 0")
    for key in ("SYNTH_BATCH_SIZE", "LABELLED_BATCH_SIZE", "EXAMPLES", "MAX_FRAMES"):
        if a[key] < 0:
            raise ConfigError(f"config key ADAPT.{key}={a[key]} must be >= 0")
    if a.KEEP not in ("ema", "student"):
        raise ConfigError(f"config key ADAPT.KEEP={a.KEEP!r} must be ema or student")
    if a.STUDENT_INPUT not in STUDENT_INPUTS:
        raise ConfigError(f"config key ADAPT.STUDENT_INPUT={a.STUDENT_INPUT!r} must be one of "
                          f"{', '.join(STUDENT_INPUTS)}")
    if a.FUSION not in ("wbf", "nms"):
        raise ConfigError(f"config key ADAPT.FUSION={a.FUSION!r} must be wbf or nms")
    world = dist.world_size()
    for key, value in (("PSEUDO.BATCH_SIZE", cfg.PSEUDO.BATCH_SIZE),
                       ("ADAPT.SYNTH_BATCH_SIZE", a.SYNTH_BATCH_SIZE),
                       ("ADAPT.LABELLED_BATCH_SIZE", a.LABELLED_BATCH_SIZE)):
        if value % world:
            raise ConfigError(f"config key {key}={value} must be divisible by the number of "
                              f"processes ({world})")


@dataclass
class AdaptState:
    """What a checkpoint keeps of the adaptation besides the modules: the held-out numbers
    before, each round's, and the best score so far (its step)."""
    before: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    best: float = -1.0
    best_step: int = 0
    stopped: bool = False


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging()
    args.config = [str(PRESET)] + list(args.config)
    args.opts = to_overrides(args) + list(args.opts)
    run_dir = None
    try:
        check_inputs(args)
        cfg, resume, run_dir = engine.resolve_run(args, lambda c: c.RUN.NAME)
        device = dist.pick_device(cfg.RUN.DEVICE)
        dist.init_distributed(device, cfg.RUN.DDP_BACKEND)
        check_config(cfg)
        enhancer = build_enhancer(cfg.ADAPT.ENHANCE, args.el_weights, device,
                                  rule_from_config(cfg.NIGHT))
        with engine.Run(run_dir, cfg, resume, device, args.overwrite, (ADAPTED, ONNX)) as run:
            return Adaptation(cfg, resume, run, device, not args.no_progress).run(enhancer)
    except engine.RunError as exc:
        return engine.report_failure(exc, run_dir)
    except (FileNotFoundError, ValueError, OSError) as exc:      # ConfigError is a ValueError
        log.error("%s", exc)
        return 2
    finally:
        dist.cleanup()


class Adaptation:
    """One run: the modules, the loop, the rounds and the end (see the module doc)."""

    def __init__(self, cfg, resume, run: engine.Run, device, progress: bool):
        self.cfg, self.resume, self.run_, self.device = cfg, resume, run, device
        self.progress = progress and dist.is_main()
        self.rank, self.world = dist.rank(), dist.world_size()
        self.entry = entry_of(cfg)
        self.spec = self.entry.input_spec(cfg)

    # -- set-up --

    def frames(self, enhancer) -> FrameSet:
        """Rank 0 extracts the footage; the others read what it wrote."""
        folder = self.run_.dir / "frames"
        frames = collect_frames(self.cfg, folder, enhancer, self.progress) \
            if dist.is_main() else None
        dist.barrier()
        return frames or collect_frames(self.cfg, folder, enhancer, False)

    def build(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.RUN.SEED)
        net, _ = load_net(cfg, cfg.MODEL.WEIGHTS, key="--weights")
        self.original = copy.deepcopy(net).eval()
        self.net = net.to(self.device).train()
        self.ema = ModelEMA(self.net, cfg.EMA.DECAY, cfg.EMA.TAU)
        self.params = [p for p in self.net.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.params, cfg.SOLVER)
        self.scheduler = ReferenceSchedule(self.optimizer, cfg.SOLVER)
        self.progress_, self.state = engine.Progress(), AdaptState()
        if self.resume is not None:
            ckpt = self.resume.checkpoint
            self.progress_ = engine.restore(ckpt, model=self.net, optimizer=self.optimizer,
                                            scheduler=self.scheduler, ema=self.ema)
            self.state = AdaptState(**ckpt["adapt"])
            log.info("resumed at step %d", self.progress_.step)
        self.ddp = DistributedDataParallel(self.net, broadcast_buffers=False) \
            if dist.is_distributed() else self.net
        self.criterion = self.entry.criterion(cfg)
        self.teacher = NightTeacher.of_module(self.ema.module, cfg, self.device)
        self.loaders = None

    def checkpoint_state(self) -> dict:
        return {"model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "ema": self.ema.state_dict(),
                "loaders": self.loaders.state_dict() if self.loaders else {},
                "adapt": asdict(self.state)}

    # -- rounds --

    def adapted_module(self):
        if self.cfg.ADAPT.KEEP == "ema":
            return self.ema.module
        return copy.deepcopy(unwrap(self.net)).eval()

    def round_loaders(self, round_: int):
        """The pseudo labels of ``round_`` (the EMA teacher's; rank 0 makes them, the others
        read the file) and the round's loaders."""
        cfg, frames = self.cfg, self.frameset
        path = self.run_.dir / "labels" / f"round_{round_:03d}.txt"
        make = lambda: label_frames(self.teacher, frames, frames.train, self.progress)  # noqa
        if dist.is_main():
            round_labels(path, make)
        dist.barrier()
        records = round_labels(path, make)
        night = {str(frames.raw(i).resolve()): str(frames.night(i)) for i in frames.train}
        faces = night_records(records, cfg.PSEUDO.HIGH, cfg.PSEUDO.LOW)
        if cfg.ADAPT.STUDENT_INPUT == "enhanced":
            faces = enhanced_records(faces, night)
        parts = {"night": faces,
                 "synth": synth_records(records, night, cfg.PSEUDO.HIGH, cfg.PSEUDO.LOW),
                 "labelled": self.labelled}
        loaders = build_loaders(cfg, round_, parts, self.rank, self.world,
                                pin=self.device.type == "cuda")
        if self.resume is not None:
            loaders.load_state_dict(self.resume.checkpoint.get("loaders", {}))
        return loaders

    def evaluate(self, step: int) -> None:
        """Rank 0: the held-out numbers of the adapted weights; a better score writes
        ADAPTED; all ranks learn whether to stop (ADAPT.PATIENCE)."""
        cfg, st = self.cfg, self.state
        if dist.is_main():
            module = self.adapted_module()
            teacher = NightTeacher.of_module(module, cfg, self.device)
            metrics = holdout_metrics(teacher, self.frameset, cfg)
            st.history.append({"step": step, **metrics})
            self.run_.meters.write_values(step, metrics)
            if metrics[SCORE_KEY] > st.best + cfg.ADAPT.MIN_DELTA or not st.history[:-1]:
                st.best, st.best_step = metrics[SCORE_KEY], step
                self.save_adapted(module, step, metrics)
            rounds_since = (step - st.best_step) // cfg.ADAPT.ROUND_STEPS
            st.stopped = rounds_since >= cfg.ADAPT.PATIENCE
            log.info("step %d held out: %s (best %.3f at step %d)%s", step,
                     ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()), st.best,
                     st.best_step, "; no better for ADAPT.PATIENCE rounds: stopping"
                     if st.stopped else "")
        flag = dist.all_reduce_sum(torch.tensor([float(st.stopped)], device=self.device))
        st.stopped = bool(flag[0] > 0)

    def save_adapted(self, module, step: int, metrics: dict) -> None:
        state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
        self.run_.save_final({"model": state, "config": config_lib.to_dict(self.cfg),
                              "step": step, "holdout": metrics}, ADAPTED, step)

    # -- the loop --

    def run(self, enhancer) -> int:
        cfg = self.cfg
        self.frameset = self.frames(enhancer)
        self.enhancer = enhancer if cfg.ADAPT.STUDENT_INPUT == "enhanced" else None
        log.info("%d frames: %d to train on, %d held out", len(self.frameset.names),
                 len(self.frameset.train), len(self.frameset.holdout))
        self.labelled = labelled_records(cfg) if cfg.ADAPT.LABELLED else []
        self.build()
        st, progress = self.state, self.progress_
        max_steps = cfg.ADAPT.MAX_ROUNDS * cfg.ADAPT.ROUND_STEPS
        meters = self.run_.metrics(max_steps)
        if not st.history:
            self.before()
        stop = engine.StopRequest()
        try:
            while progress.step < max_steps and not st.stopped:
                round_ = progress.step // cfg.ADAPT.ROUND_STEPS
                if self.loaders is None or self.loaders.round != round_:
                    self.loaders = self.round_loaders(round_)
                if self.loaders.empty:              # the same on every rank (same labels)
                    log.warning("stopping at step %d: nothing to train on", progress.step)
                    st.stopped = True
                    break
                stopping = self.step(meters, stop)
                end = progress.step % cfg.ADAPT.ROUND_STEPS == 0
                if end:
                    self.evaluate(progress.step)
                if end or stopping or progress.step % cfg.RUN.CKPT_EVERY == 0 or \
                        progress.step == max_steps:
                    self.run_.save_checkpoint(progress, self.checkpoint_state,
                                              reason=stop.requested)
                if stopping:
                    log.warning("stopped at step %d; resume with --resume auto", progress.step)
                    return 0
        finally:
            stop.restore()
        if dist.is_main():
            self.finish()
        return 0

    def before(self) -> None:
        """The held-out numbers of the weights given, at step 0 (they are ADAPTED until a
        round beats them)."""
        self.evaluate(0)
        self.state.before = dict(self.state.history[0]) if self.state.history else {}
        self.state.before.pop("step", None)

    def step(self, meters, stop) -> bool:
        cfg, progress = self.cfg, self.progress_
        round_ = self.loaders.round
        images, targets, counts, skipped = next_batch(self.loaders, cfg, self.spec,
                                                      progress.step, self.rank, self.device,
                                                      enhancer=self.enhancer)
        with autocast(self.device, cfg.RUN.AMP):
            out = self.ddp(images)
        losses = self.criterion(out, targets, tuple(images.shape[-2:]))
        loss = sum(losses.values())
        stopping = engine.check_loss(progress.step + 1, loss, losses, self.device, stop)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = None
        if cfg.SOLVER.GRAD_CLIP > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.SOLVER.GRAD_CLIP)
        engine.check_gradients(progress.step + 1, list(self.net.named_parameters()), losses,
                               norm)
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update(self.net)
        progress.step += 1
        progress.skipped += skipped
        meters.update(loss=loss.detach(), **{k: v.detach() for k, v in losses.items()},
                      **counts)
        self.run_.log_step(progress.step, progress.step == cfg.ADAPT.MAX_ROUNDS *
                           cfg.ADAPT.ROUND_STEPS, lr=self.optimizer.param_groups[0]["lr"],
                           round=round_)
        return stopping

    # -- the end (rank 0) --

    def finish(self) -> None:
        """The adapted detector (the best round's, from ADAPTED), its ONNX export, the
        example images and the report page."""
        cfg, folder, st = self.cfg, self.run_.dir, self.state
        adapted = copy.deepcopy(self.original)
        adapted.load_state_dict(load_file(folder / ADAPTED, "adapted weights")["model"])
        adapted.eval()
        onnx = export_onnx(adapted, cfg, folder / ONNX, self.frameset) if cfg.ADAPT.ONNX \
            else "not written (ADAPT.ONNX=False)"
        examples = draw_examples(self.original, adapted, cfg, self.frameset, folder)
        after = next(h for h in st.history if h["step"] == st.best_step)
        after = {k: v for k, v in after.items() if k != "step"}
        info = {"detector": f"{cfg.MODEL.NAME} from {cfg.MODEL.WEIGHTS}",
                "footage": f"{cfg.ADAPT.IMAGES}: {len(self.frameset.names)} frames, "
                           f"{len(self.frameset.train)} trained on, "
                           f"{len(self.frameset.holdout)} held out",
                "student input": deployment(cfg),
                "night mode": f"--enhance {cfg.ADAPT.ENHANCE}, teacher input "
                              f"{cfg.ADAPT.TEACHER_INPUT}, scales {list(cfg.ADAPT.SCALES)}, "
                              f"flip {cfg.ADAPT.FLIP}",
                "thresholds": f"faces >= {cfg.PSEUDO.HIGH}, ignored [{cfg.PSEUDO.LOW}, "
                              f"{cfg.PSEUDO.HIGH})",
                "steps": f"{self.progress_.step} (rounds of {cfg.ADAPT.ROUND_STEPS}); "
                         f"adapted weights from step {st.best_step}"
                         + (" = the weights given: no round improved the held-out score"
                            if st.best_step == 0 else ""),
                "adapted weights": str(folder / ADAPTED), "ONNX": onnx}
        md, _ = write_report(folder, info, st.before, after, st.history, examples)
        for key in st.before:
            print(f"{key}: before {st.before[key]:.3f}, after {after[key]:.3f}")
        print(f"adapted weights {folder / ADAPTED}; ONNX {onnx}; report {md}")


def deployment(cfg) -> str:
    """How the adapted detector is meant to run (ADAPT.STUDENT_INPUT)."""
    if cfg.ADAPT.STUDENT_INPUT == "enhanced":
        return (f"enhanced: trained and measured on the --enhance {cfg.ADAPT.ENHANCE} copies; "
                f"run the adapted detector behind --enhance {cfg.ADAPT.ENHANCE} (the ONNX "
                f"file expects enhanced frames)")
    return "raw: trained and measured on the raw frames; run the adapted detector without " \
           "--enhance"


def export_onnx(net, cfg, path: Path, frames: FrameSet) -> str:
    """Export with the detector's own exporter and compare onnxruntime with PyTorch on a
    held-out frame; returns a line for the report."""
    import numpy as np
    from models.onnx_runner import onnx_runner
    entry = entry_of(cfg)
    if entry.export_onnx is None:
        return f"not written: {cfg.MODEL.NAME} has no ONNX export"
    entry.export_onnx(copy.deepcopy(net).cpu().eval(), path)
    raw, _ = frames.read(frames.holdout[0])
    h, w = raw.shape[0] // 32 * 32 or 32, raw.shape[1] // 32 * 32 or 32
    rgb = np.ascontiguousarray(raw[:h, :w, ::-1])
    ref = FaceDetector.from_config(copy.deepcopy(net), cfg, torch.device("cpu"))(rgb[None])[0]
    got = onnx_runner(path, cfg)(rgb)
    # compared above PSEUDO.LOW: the many near-zero boxes of a dark frame tie and reorder
    ref, got = ref[ref[:, 4] >= cfg.PSEUDO.LOW], got[got[:, 4] >= cfg.PSEUDO.LOW]
    n = min(len(ref), len(got))
    diff = float((got[:n] - ref[:n]).abs().max()) if n else 0.0
    log.info("ONNX %s: %d/%d detections >= %g onnxruntime/torch, largest difference %.2e",
             path, len(got), len(ref), cfg.PSEUDO.LOW, diff)
    return f"{path} (onnxruntime vs PyTorch on a held-out frame: {len(got)}/{len(ref)} " \
           f"detections scoring >= {cfg.PSEUDO.LOW}, largest difference {diff:.1e})"


def draw_examples(original, adapted, cfg, frames: FrameSet, folder: Path) -> list:
    """ADAPT.EXAMPLES held-out frames, before and after, as PNGs in ``folder/examples``."""
    from data.image_folder import write_image_atomic
    import numpy as np
    device = torch.device("cpu")
    nets = [NightTeacher.of_module(copy.deepcopy(n), cfg, device) for n in (original, adapted)]
    out = []
    for k, i in enumerate(frames.holdout[:cfg.ADAPT.EXAMPLES]):
        raw, night = frames.read(i)
        before, after = (t.plain(student_view(raw, night, cfg.ADAPT.STUDENT_INPUT))
                         for t in nets)
        image = example_image(night, before, after, cfg.PSEUDO.HIGH)
        rel = f"examples/{k:02d}.png"
        write_image_atomic(np.asarray(image), folder / rel)
        out.append((frames.names[i], rel))
    return out


if __name__ == "__main__":
    raise SystemExit(main())
