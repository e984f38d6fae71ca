"""Exceptions with messages that name the offending file/row and say what to do."""


class RscirError(Exception):
    """Base class of every error raised on purpose by rscir-kit."""


class DataError(RscirError, ValueError):
    """Bad or missing input data (image, CSV row, unknown class, missing query...)."""


class ModelMismatchError(RscirError, ValueError):
    """A feature file/cache was made by a different model or preprocessing than requested."""
