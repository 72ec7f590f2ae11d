"""The one exception type users see for bad input, and the one warning type."""


class InterpError(ValueError):
    """Bad input to interp: a one-line message naming the culprit.

    Subclasses ``ValueError`` so callers that already catch that keep working; the
    CLI turns it into a one-line message and exit code 2.
    """


class InterpWarning(UserWarning):
    """Something the user should know about a result that is still computed (e.g. a default chosen for them).

    The CLI prints it as one line on stderr (``interp CMD: warning: …``); Python shows it as a warning.
    """
