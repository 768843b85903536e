"""`tether <verb>`: one console script. Bad input prints one line on stderr and exits with code 2."""

from __future__ import annotations

import signal
import sys
import threading
import warnings

from tether.errors import Interrupted, TetherInputError

VERBS = {
    "train": "tether.cli.train",
    "probe": "tether.cli.probe",
    "eval": "tether.cli.eval",
    "bench": "tether.cli.bench",
    "demo": "tether.cli.demo",
    "antidote": "tether.cli.antidote",
    "safelora": "tether.cli.safelora",
    "data": "tether.cli.data",
}
USAGE = "usage: tether {train,probe,eval,bench,demo,antidote,safelora,data} ...   (tether <verb> --help)"
# Libraries whose deprecation notices are about their own API (e.g. transformers' `gradient_checkpointing` rename),
# not about anything a tether user passed: kept off the CLI's stderr. tether's own warnings still show.
QUIET_LIBRARIES = r"(transformers|trl|peft|torch|accelerate|datasets|huggingface_hub|tokenizers)(\.|$)"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] not in VERBS:
        sys.stderr.write(f"tether: error: unknown command {argv[0]!r}; choose one of {', '.join(VERBS)}\n")
        return 2
    import importlib

    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=QUIET_LIBRARIES)
    # SIGTERM, like Ctrl-C, becomes an exception, so that a run cleans up and says how to resume (main thread only)
    main_thread = threading.current_thread() is threading.main_thread()
    signals = (signal.SIGINT, signal.SIGTERM) if main_thread else ()
    previous = {signum: signal.signal(signum, _interrupt) for signum in signals}
    try:
        verb = importlib.import_module(VERBS[argv[0]])
        return verb.main(argv[1:])
    except TetherInputError as error:
        sys.stderr.write(f"tether: error: {error}\n")
        return 2
    except KeyboardInterrupt as error:  # Ctrl-C or SIGTERM: one line (a run says how to resume), no traceback
        signum = error.signum if isinstance(error, Interrupted) else signal.SIGINT
        sys.stderr.write(f"tether: {error if isinstance(error, Interrupted) else 'interrupted'}\n")
        return 128 + signum
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _interrupt(signum, frame):
    raise Interrupted(signum)


if __name__ == "__main__":
    sys.exit(main())
