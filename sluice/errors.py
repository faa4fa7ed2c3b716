"""The root of Sluice's own exceptions. Each adapter subpackage derives its errors from it,
so callers can catch `SluiceError` and library errors never leak past an adapter."""


class SluiceError(Exception):
    """Base class of every error Sluice raises on purpose."""
