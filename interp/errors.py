"""The one exception type users see for bad input."""


class InterpError(ValueError):
    """Bad input to interp: a one-line message naming the culprit.

    Subclasses ``ValueError`` so callers that already catch that keep working; the
    CLI turns it into a one-line message and exit code 2.
    """
