"""The error every loader raises for missing or malformed data."""

__all__ = ["DataError"]


class DataError(ValueError):
    """A data folder or file is missing or is not in the format its loader reads; the message
    names the path and what is wrong with it."""
