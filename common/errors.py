"""The one exception type a user ever sees: a one-line message, a non-zero exit, no traceback."""


class PaperzooError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    exit_code = 2


class TrainingDiverged(PaperzooError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""

    exit_code = 3
