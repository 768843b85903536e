"""The one error type for bad user input, and the argparse behaviour that goes with it: one line, exit code 2."""

import argparse
import sys


class TetherInputError(ValueError):
    """A bad input (file, config field, model name, dataset row) that the user can fix.

    The message names the input and the fix, on one line.
    """


class Interrupted(KeyboardInterrupt):
    """SIGINT (Ctrl-C) or SIGTERM: the CLI prints `tether: <message>` (one line, no traceback) and exits with
    128 + the signal number (130, 143). A `KeyboardInterrupt`, so that code catching Ctrl-C also catches it."""

    def __init__(self, signum: int, message: str = "interrupted"):
        super().__init__(message)
        self.signum = signum


class OneLineErrors:
    """Mixin for argparse parsers: a usage error prints one line on stderr and exits with code 2."""

    def error(self, message):
        sys.stderr.write(f"tether: error: {message}\n")
        sys.exit(2)


class ArgumentParser(OneLineErrors, argparse.ArgumentParser):
    """`argparse.ArgumentParser` with one-line errors, for the CLI verbs."""
