"""`tether <verb>`: one console script. Bad input prints one line on stderr and exits with code 2."""

from __future__ import annotations

import sys

from tether.errors import TetherInputError

VERBS = {
    "train": "tether.cli.train",
    "probe": "tether.cli.probe",
    "eval": "tether.cli.eval",
    "bench": "tether.cli.bench",
    "demo": "tether.cli.demo",
    "antidote": "tether.cli.antidote",
}
USAGE = "usage: tether {train,probe,eval,bench,demo,antidote} ...   (tether <verb> --help)"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] not in VERBS:
        sys.stderr.write(f"tether: error: unknown command {argv[0]!r}; choose one of {', '.join(VERBS)}\n")
        return 2
    import importlib

    verb = importlib.import_module(VERBS[argv[0]])
    try:
        return verb.main(argv[1:])
    except TetherInputError as error:
        sys.stderr.write(f"tether: error: {error}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
