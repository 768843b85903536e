"""`tether probe fit | eval | score`: fit an activation probe, evaluate it (or sweep layers × poolings), audit data."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tether.errors import ArgumentParser, TetherInputError

EXAMPLES = """examples:
  tether probe fit --model smollm2-135m-instruct --harmful advbench safety-llamas --benign alpaca gsm8k:1000 \\
      --layers 10 11 12 13 14 --pooling mean --out probes/smollm2
  tether probe eval --probe probes/smollm2 --harmful harmbench I-CoNa --benign alpaca-eval xstest-safe
  tether probe score --probe probes/smollm2 --data my_train.jsonl --out risk.jsonl"""


def make_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="tether probe", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True, parser_class=ArgumentParser)
    common = ArgumentParser(add_help=False)
    common.add_argument("--data_dir", default=None, help="folder of the named sets (default ../shared/data)")
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
    evaluate.add_argument("--poolings", nargs="+", default=["mean", "max", "concat", "weighted"])
    evaluate.add_argument("--window", type=int, default=3, help="consecutive layers pooled in the sweep")
    evaluate.add_argument("--out", default=None, help="write eval.json (and the sweep report) here")

    score = verbs.add_parser("score", parents=[common], help="per-example risk of a dataset (pre-training audit)")
    score.add_argument("--probe", required=True)
    score.add_argument("--data", required=True, help="training data (file or named dataset) or a prompt set")
    score.add_argument("--threshold", type=float, default=0.5)
    score.add_argument("--out", required=True, help="JSONL of per-example risk")
    return parser


def parse_flagged_limits(items: list[str]) -> dict[str, float]:
    """`SET=SHARE` items -> {set: share}."""
    limits = {}
    for item in items:
        name, _, share = item.rpartition("=")
        try:
            limits[name] = float(share)
        except ValueError:
            name = ""
        if not name or not 0.0 <= limits[name] <= 1.0:
            raise TetherInputError(
                f"--val_max_flagged {item}: write SET=SHARE with SHARE in [0, 1], e.g. xstest-safe=0.1"
            )
    return limits


def main(argv: list[str]) -> int:
    from tether.critics.probe import LinearProbe
    from tether.critics.probe_sweep import (
        FeatureBank,
        best_candidate,
        evaluate,
        fit_from_sources,
        layer_candidates,
        sweep,
        write_sweep_report,
    )
    from tether.modeling import load_model_and_tokenizer

    args = make_parser().parse_args(argv)
    probe = None if args.verb == "fit" else LinearProbe.load(args.probe)
    model_name = args.model or (probe.metadata.get("model", {}).get("name") if probe else None)
    if not model_name:
        raise TetherInputError("pass --model (the model to read activations from)")
    if args.verb == "fit" and Path(args.out).exists():
        raise TetherInputError(f"probe output {args.out} already exists; pass another --out")
    if args.verb == "fit" and (args.val_harmful is None) != (args.val_benign is None):
        raise TetherInputError("layer selection needs both --val_harmful and --val_benign; pass both or neither")
    if args.verb == "fit" and args.val_max_flagged is not None and not args.val_harmful:
        raise TetherInputError("--val_max_flagged constrains the layer selection; pass --val_harmful and --val_benign")
    if args.verb == "fit" and args.val_max_flagged is not None:
        args.val_max_flagged = parse_flagged_limits(args.val_max_flagged)
        unknown = sorted(set(args.val_max_flagged) - set(args.val_benign))
        if unknown:
            raise TetherInputError(f"--val_max_flagged names {unknown[0]}, not one of --val_benign; limit those sets")
    if args.verb == "fit" and args.val_harmful and args.pooling not in (None, "last-layer"):
        raise TetherInputError(f"layer selection (--val_harmful) fits one-layer probes; drop --pooling {args.pooling}")
    model, tokenizer = load_model_and_tokenizer(model_name)
    if probe is not None:
        probe.check_model(model, tokenizer)
    position = args.position if args.verb == "fit" else probe.position
    layers = None if args.verb == "eval" and args.sweep else args.layers if args.verb == "fit" else probe.layers
    tokens = args.tokens if args.verb == "fit" else probe.tokens
    bank = FeatureBank(model, tokenizer, args.data_dir, args.batch_size, position, layers, tokens)

    if args.verb == "fit":
        from tether.critics.probe import check_layers

        check_layers(model, args.layers)
        if args.val_harmful is None:
            pooling = args.pooling or "mean"
            probe = fit_from_sources(bank, args.harmful, args.benign, args.layers, pooling, args.C, args.seed)
        else:
            candidates = layer_candidates(
                bank, args.harmful, args.benign, args.layers, args.val_harmful, args.val_benign, args.C, args.seed
            )
            probe = best_candidate(candidates, args.val_harmful, args.val_benign, args.val_max_flagged)
            for row in probe.metadata["layer_selection"]["candidates"]:
                aurocs = "  ".join(f"{s} {a:.3f}" for s, a in row["val_auroc"].items())
                flagged = "  ".join(f"{s} {share:.1%}" for s, share in row["val_flagged"].items())
                print(
                    f"layer {row['layer']:3d}  validation AUROC mean {row['val_mean_auroc']:.3f}  ({aurocs}); "
                    f"flagged {flagged}"
                )
        probe.metadata["model"]["name"] = model_name
        probe.metadata["fit_metrics"] = evaluate(probe, bank, args.harmful, args.benign)
        probe.save(args.out)
        print(f"probe: {args.out} (layers {probe.layers}, {probe.pooling}, C {probe.metadata['C']:g})")
        return 0

    if args.verb == "eval":
        result = evaluate(probe, bank, args.harmful, args.benign, args.threshold)
        for source, metrics in result["per_harmful_set"].items():
            print(
                f"{source:28s} AUROC {metrics['auroc']:.3f}  recall@1%FPR {metrics['recall_at_1pct_fpr']:.3f}  "
                f"recall@5%FPR {metrics['recall_at_5pct_fpr']:.3f}  accuracy {metrics['accuracy']:.3f}"
            )
        for source, share in result["flagged_share"].items():
            print(f"{source:28s} flagged at {args.threshold}: {share:.1%}")
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "eval.json").write_text(json.dumps(result, indent=2))
        if args.sweep:
            fit_sets = probe.metadata["fit_sets"]
            n = len(bank.all_layers)
            layer_sets = [[layer] for layer in range(n)] + [
                list(range(s, s + args.window)) for s in range(0, n - args.window + 1, args.window)
            ]
            rows = sweep(
                bank,
                fit_sets["harmful"],
                fit_sets["benign"],
                args.harmful,
                args.benign,
                layer_sets,
                ["last-layer", *args.poolings],
                seed=probe.metadata.get("seed", 0),
            )
            write_sweep_report(rows, args.out or ".", f"probe sweep: {model_name}")
            print(f"sweep: {Path(args.out or '.') / 'sweep.md'}")
        return 0

    # score
    from tether.critics.probe_sweep import prompts_of

    if probe.position in ("response", "both"):
        from tether.critics.probe import chat_row_features
        from tether.critics.probe_sweep import load_chat_rows

        rows = load_chat_rows(args.data, args.data_dir)  # read once; features of the probe's layers only
        prompts = [row["messages"] for row in rows]
        features = chat_row_features(model, tokenizer, rows, probe.layers, probe.position, args.batch_size)
        risks = probe.score(features).tolist()
    else:
        prompts = prompts_of(args.data, args.data_dir)
        from tether.critics.probe import prompt_features

        features = prompt_features(model, tokenizer, prompts, probe.layers, args.batch_size, tokens=probe.tokens)
        risks = probe.score(features).tolist()
    out = Path(args.out)
    staging = out.with_name(out.name + ".incomplete")
    with staging.open("w") as f:
        for i, (prompt, risk) in enumerate(zip(prompts, risks, strict=True)):
            f.write(
                json.dumps(
                    {"index": i, "risk": risk, "flagged": risk >= args.threshold, "text": prompt[-1]["content"][:200]}
                )
                + "\n"
            )
    staging.rename(out)
    flagged = sum(r >= args.threshold for r in risks)
    print(f"{len(risks)} examples, {flagged} ({flagged / len(risks):.1%}) at risk >= {args.threshold}; wrote {out}")
    return 0
