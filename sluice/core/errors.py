"""The one base class of the pure core's errors.

Every error the core raises on purpose is a `CoreInputError`: inputs (numbers, specs, ids)
that do not describe something valid, with a message naming the field, the value and what
was expected. It is a `ValueError`, so code that only knows Python's exceptions still
catches it; the CLI and the stream worker catch this one class.
"""


class CoreInputError(ValueError):
    """Inputs the pure core cannot work with; the message says which and why."""
