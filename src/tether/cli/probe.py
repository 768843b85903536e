"""`tether probe fit | eval | score`: fit an activation probe, evaluate it (or sweep layers × poolings), audit data."""

from __future__ import annotations

import argparse

from tether.critics.probe_tasks import SWEEP_POOLINGS
from tether.errors import ArgumentParser

EXAMPLES = """examples:
  tether probe fit --model smollm2-135m-instruct --harmful advbench safety-llamas --benign alpaca gsm8k:1000 \\
      --layers 10 11 12 13 14 --pooling mean --out probes/smollm2
  tether probe eval --probe probes/smollm2 --harmful harmbench I-CoNa --benign alpaca-eval xstest-safe
  tether probe score --probe probes/smollm2 --data my_train.jsonl --out risk.jsonl"""


def make_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="tether probe", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True, parser_class=ArgumentParser)
    common = ArgumentParser(add_help=False)
    common.add_argument(
        "--data_dir",
        default=None,
        help="folder of the named sets (default $TETHER_DATA_DIR, else ../shared/data, else the Hub)",
    )
    common.add_argument("--batch_size", type=int, default=16)
    common.add_argument("--model", default=None, help="model (default: the one named in the probe)")

    fit = verbs.add_parser("fit", parents=[common], help="fit a probe")
    fit.add_argument("--harmful", nargs="+", required=True, help="harmful prompt sources (named sets or files)")
    fit.add_argument("--benign", nargs="+", required=True, help="benign prompt sources")
    fit.add_argument("--layers", nargs="+", type=int, required=True, help="hidden-state indices, 0 = embeddings")
    fit.add_argument("--pooling", default=None, help="last-layer, mean (default), max, weighted or concat")
    fit.add_argument(
        "--val_harmful",
        nargs="+",
        default=None,
        help="with --val_benign: a one-layer probe at each of --layers, the best by mean AUROC on these sets kept",
    )
    fit.add_argument("--val_benign", nargs="+", default=None, help="benign validation sets of the layer selection")
    fit.add_argument(
        "--val_max_flagged",
        nargs="+",
        default=None,
        metavar="SET=SHARE",
        help="layer selection: only layers flagging at most SHARE of the validation benign SET at 0.5",
    )
    fit.add_argument("--C", type=float, default=None, help="inverse L2 strength (default: 5-fold CV)")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument(
        "--position",
        default="prompt",
        choices=["prompt", "response", "both"],
        help="prompt: last prompt token, sources are prompt sets; response: last response token, "
        "sources are chat data with responses; both: the two positions' features side by side",
    )
    fit.add_argument(
        "--tokens",
        default="last",
        choices=["last", "mean", "template"],
        help="position prompt: the last prompt token's state (the paper), the mean over the prompt's tokens, or "
        "template: the states of the user message's last token and of every chat-template token after it, side by side",
    )
    fit.add_argument("--out", required=True, help="probe directory to create")

    evaluate = verbs.add_parser("eval", parents=[common], help="AUROC and recall at low FPR on named sets")
    evaluate.add_argument("--probe", required=True)
    evaluate.add_argument("--harmful", nargs="+", required=True)
    evaluate.add_argument("--benign", nargs="+", required=True)
    evaluate.add_argument("--threshold", type=float, default=0.5)
    evaluate.add_argument("--sweep", action="store_true", help="also fit every layer × pooling on the probe's sets")
    evaluate.add_argument("--poolings", nargs="+", default=list(SWEEP_POOLINGS))
    evaluate.add_argument("--window", type=int, default=3, help="consecutive layers pooled in the sweep")
    evaluate.add_argument("--out", default=None, help="write eval.json (and the sweep report) here")

    score = verbs.add_parser("score", parents=[common], help="per-example risk of a dataset (pre-training audit)")
    score.add_argument("--probe", required=True)
    score.add_argument("--data", required=True, help="training data (file or named dataset) or a prompt set")
    score.add_argument("--threshold", type=float, default=0.5)
    score.add_argument("--out", required=True, help="JSONL of per-example risk")
    return parser


def main(argv: list[str]) -> int:
    from tether.critics.probe_tasks import evaluate_probe_dir, fit_probe_dir, parse_flagged_limits, score_data

    args = make_parser().parse_args(argv)
    common = {"data_dir": args.data_dir, "batch_size": args.batch_size}
    if args.verb == "fit":
        limits = None if args.val_max_flagged is None else parse_flagged_limits(args.val_max_flagged)
        fit_probe_dir(
            args.model,
            args.harmful,
            args.benign,
            args.layers,
            args.pooling,
            args.out,
            val_harmful=args.val_harmful,
            val_benign=args.val_benign,
            val_max_flagged=limits,
            C=args.C,
            seed=args.seed,
            position=args.position,
            tokens=args.tokens,
            **common,
        )
    elif args.verb == "eval":
        evaluate_probe_dir(
            args.probe,
            args.harmful,
            args.benign,
            model=args.model,
            threshold=args.threshold,
            sweep=args.sweep,
            poolings=args.poolings,
            window=args.window,
            out=args.out,
            **common,
        )
    else:
        score_data(args.probe, args.data, args.out, model=args.model, threshold=args.threshold, **common)
    return 0
