"""Exceptions with messages that name the offending file/row and say what to do."""


class RscirError(Exception):
    """Base class of every error raised on purpose by rscir-kit."""


class DataError(RscirError, ValueError):
    """Bad or missing input data (image, CSV row, unknown class, missing query...)."""


class ModelMismatchError(RscirError, ValueError):
    """A feature file/cache was made by a different model or preprocessing than requested."""


class MissingDataError(DataError):
    """A dataset is absent and cannot be fetched automatically; the message says how to get it.

    The notebook runner reports a notebook stopped by this error as *skipped* (data not available) and
    goes on with the others, instead of failing the whole main job.
    """


class ParameterError(RscirError, ValueError):
    """A bad parameter value (λ outside [0, 1], unknown method or normalisation, bad option...)."""


class OutputError(RscirError, OSError):
    """An output cannot be written (disk full, read-only folder, no permission); the message names the path."""


class BusyError(RscirError):
    """Another run holds the lock of this output (extraction, index build); wait for it or choose another output."""
