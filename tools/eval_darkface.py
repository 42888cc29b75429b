"""Evaluate DARK FACE predictions exactly as the official Octave tool does (AP at IoU 0.5).

    python tools/eval_darkface.py --gt GT_DIR --pred PRED_DIR [--ids FILE] [--json]
        [--plot pr.png] [--csv pr.csv] [--official-curves DIR]

GT_DIR holds ``<id>.txt`` (face count, then ``x1 y1 x2 y2`` lines); PRED_DIR holds ``<id>.txt``
(``x1 y1 x2 y2 score`` lines, e.g. from test.py). ``--ids`` restricts the evaluation to the
listed images (one id per line, e.g. the 500-image held-out split). See docs/EVALUATION.md.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from engine.cli import parse_eval_args, run_evaluation
from evaluation.common import PRCurve, plot_pr_curves, write_pr_csv
from evaluation.darkface import evaluate_darkface, read_id_list
from evaluation.official_curves import darkface_curves


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gt", required=True, type=Path, help="folder of GT <id>.txt files")
    parser.add_argument("--pred", required=True, type=Path,
                        help="folder of prediction <id>.txt files")
    parser.add_argument("--ids", type=Path, help="file of image ids to evaluate (one a line)")
    parser.add_argument("--json", action="store_true",
                        help='print only one JSON object {"ap": ...} on stdout')
    parser.add_argument("--plot", type=Path, help="write the PR curve to this PNG")
    parser.add_argument("--csv", type=Path, help="write threshold,precision,recall to this CSV")
    return parse_eval_args(parser, argv, curves_help="folder of official baseline .mat curves "
                                                     "to draw beside ours (needs --plot)",
                           label_help="legend label of our curve")


def main(argv=None) -> int:
    return run_evaluation(evaluate, parse_args(argv))


def evaluate(args) -> int:
    ids = read_id_list(args.ids) if args.ids is not None else None
    result = evaluate_darkface(args.gt, args.pred, ids=ids, progress=not args.json,
                               allow_missing=args.allow_missing)
    ap, precision, recall = result["ap"], result["precision"], result["recall"]

    if args.csv is not None:
        write_pr_csv(args.csv, precision, recall)
    if args.plot is not None:
        official = darkface_curves(args.official_curves) if args.official_curves else []
        plot_pr_curves(args.plot, [("DARK FACE", [PRCurve(args.label, precision, recall)],
                                    official)])
    if args.json:
        print(json.dumps({"ap": ap}))
    else:
        print(f"DARK FACE AP (IoU 0.5): {ap:.4f}")
        for path in (args.csv, args.plot):
            if path is not None:
                print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
