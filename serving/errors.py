"""The one exception type of the serving part, so entry points can print it and exit non-zero."""


class ServingError(RuntimeError):
    """Bad serving input or a failed engine; the message says what went wrong and what to do."""
