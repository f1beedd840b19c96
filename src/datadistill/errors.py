"""The one exception type of datadistill."""


class DistillError(Exception):
    """A user-facing problem: the message is one line naming the problem and the fix.

    The CLI prints it without a traceback and exits with status 2.
    """
