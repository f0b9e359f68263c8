"""One exception family. Every message says what went wrong and how to fix it."""


class AutofeatError(Exception):
    """Base class of every error feast-autofeat raises on purpose."""


class DataError(AutofeatError):
    """Input data is missing, malformed or inconsistent."""


class RepoError(AutofeatError):
    """The feature repository is not in a usable state (not prepared, not applied, ...)."""
