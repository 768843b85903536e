"""`tether demo`: the smallest meaningful bench, embedded in the package, offline on the default data directory:
align SmolLM2-135M-Instruct, attack it with the 100 pure-harmful pairs under SFT, C-SFT and tether's defaults,
evaluate, and write the table (each target marked met or missed) and the β plot. A rerun reuses every finished
stage."""

from __future__ import annotations

from tether.bench.config import DEMO_CONFIG
from tether.cli.bench import make_parser, run


def main(argv: list[str]) -> int:
    from tether.bench.config import bench_config_from_dict
    from tether.yaml_files import load_yaml

    parser = make_parser(prog="tether demo", config_required=False)
    parser.add_argument("--print_config", action="store_true", help="print the embedded bench config and exit")
    args = parser.parse_args(argv)
    text = DEMO_CONFIG.read_text()
    if args.print_config:
        print(text)
        return 0
    if args.config is None:
        config = bench_config_from_dict(load_yaml(text), "tether demo (embedded)")
    else:
        from tether.bench.config import load_bench_config

        config = load_bench_config(args.config)
    return run(args, config)
