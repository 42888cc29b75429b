"""Evaluate WIDER FACE val predictions exactly as the official MATLAB eval_tools do.

    python tools/eval_widerface.py --gt GT_DIR --pred PRED_DIR [--json] [--plot pr.png]
        [--csv PREFIX] [--official-curves DIR]

GT_DIR holds the official ``wider_face_val.mat`` and ``wider_{easy,medium,hard}_val.mat``;
PRED_DIR holds ``<event>/<image name>.txt`` (image name, box count, ``x y w h score`` lines).
``--csv PREFIX`` writes ``PREFIX_easy.csv`` etc. See docs/EVALUATION.md.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from engine.cli import parse_eval_args, run_evaluation
from evaluation.common import PRCurve, plot_pr_curves, write_pr_csv
from evaluation.official_curves import wider_curves
from evaluation.widerface import SETTINGS, evaluate_widerface


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gt", required=True, type=Path,
                        help="folder with wider_face_val.mat and wider_{easy,medium,hard}_val.mat")
    parser.add_argument("--pred", required=True, type=Path,
                        help="folder of <event>/<image name>.txt prediction files")
    parser.add_argument("--json", action="store_true",
                        help='print only one JSON object {"easy": ..., "medium": ..., '
                             '"hard": ...} on stdout')
    parser.add_argument("--plot", type=Path, help="write the three PR curves to this PNG")
    parser.add_argument("--csv", help="write PREFIX_<setting>.csv (threshold,precision,recall)")
    curves = ("folder of <method>/wider_pr_info_*_val.mat leaderboard curves to draw beside "
              "ours (needs --plot)")
    return parse_eval_args(parser, argv, curves, label_help="legend label of our curves")


def main(argv=None) -> int:
    return run_evaluation(evaluate, parse_args(argv))


def evaluate(args) -> int:
    result = evaluate_widerface(args.gt, args.pred, progress=not args.json,
                                allow_missing=args.allow_missing)
    curves = result["curves"]

    written = []
    if args.csv is not None:
        for setting in SETTINGS:
            path = Path(f"{args.csv}_{setting}.csv")
            write_pr_csv(path, curves[setting]["precision"], curves[setting]["recall"])
            written.append(path)
    if args.plot is not None:
        panels = []
        for setting in SETTINGS:
            ours = PRCurve(args.label, curves[setting]["precision"], curves[setting]["recall"])
            official = wider_curves(args.official_curves, setting) if args.official_curves else []
            panels.append((f"WIDER FACE val: {setting}", [ours], official))
        plot_pr_curves(args.plot, panels)
        written.append(args.plot)

    if args.json:
        print(json.dumps({setting: result[setting] for setting in SETTINGS}))
    else:
        for setting in SETTINGS:
            print(f"{setting:>6} val AP: {result[setting]:.4f}")
        for path in written:
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
