"""`tether bench --config FILE`: the safe reference, the probe, attacks × methods, evaluation and the report.
`tether bench report --out_dir DIR` rebuilds the report from the results on disk."""

from __future__ import annotations

import argparse

from tether.errors import ArgumentParser

EXAMPLES = """examples:
  tether bench --config configs/bench/mixed-gsm8k.yaml --out_dir runs/bench-mixed
  tether bench --config configs/bench/mixed-gsm8k.yaml --scenarios gsm8k-hr0.01 --methods SFT "A-Reg probe"
  tether bench report --out_dir runs/bench-mixed"""


def make_parser(prog: str = "tether bench", config_required: bool = True) -> argparse.ArgumentParser:
    p = ArgumentParser(prog=prog, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=config_required, help="bench YAML (see configs/bench/)")
    p.add_argument("--out_dir", default=None, help="bench directory (default: the config's out_dir)")
    p.add_argument(
        "--data_dir",
        default=None,
        help="folder of the named sets (default $TETHER_DATA_DIR, else ../shared/data, else the Hub)",
    )
    p.add_argument("--scenarios", nargs="+", default=None, help="run only these scenarios")
    p.add_argument("--methods", nargs="+", default=None, help="run only these methods")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="override the config's seeds")
    return p


def report_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="tether bench report")
    p.add_argument("--out_dir", required=True, help="a bench directory")
    return p


def run(args, config) -> int:
    from tether.bench.pipeline import Bench

    if args.data_dir:
        config.data_dir = args.data_dir
    if args.seeds:
        config.seeds = args.seeds
    report = Bench(config, args.out_dir).run(args.scenarios, args.methods)
    print(report.read_text())
    print(f"report: {report}")
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["report"]:
        from tether.bench.report import write_report

        args = report_parser().parse_args(argv[1:])
        report = write_report(args.out_dir)
        print(report.read_text())
        print(f"report: {report}")
        return 0
    from tether.bench.config import load_bench_config

    args = make_parser().parse_args(argv)
    return run(args, load_bench_config(args.config))
