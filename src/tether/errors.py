"""The one error type for bad user input: the CLI prints its message as one line and exits with code 2."""


class TetherInputError(ValueError):
    """A bad input (file, config field, model name, dataset row) that the user can fix.

    The message names the input and the fix, on one line.
    """
