"""Exceptions with messages that name the offending file/row and say what to do."""


class RscirError(Exception):
    """Base class of every error raised on purpose by rscir-kit."""


class DataError(RscirError, ValueError):
    """Bad or missing input data (image, CSV row, unknown class, missing query...)."""


class ModelMismatchError(RscirError, ValueError):
    """A feature file/cache was made by a different model or preprocessing than requested."""


class MissingDataError(DataError):
    """Data that is *absent* (not asked to be downloaded, or not downloadable); the message says how to get it.

    The rule: absent data → MissingDataError → the notebook runner reports that notebook as *skipped* (data
    not available) and goes on with the others; data that is present but wrong (a malformed row, wrong image
    counts), or a download that was tried and failed → DataError → the notebook fails.
    """


class DatasetNotFoundError(MissingDataError):
    """A dataset's files are not under its root. Built from the dataset object (torchgeo style): names the
    dataset, the root and what was looked for, says whether ``download=True`` would fetch it, and what to do
    otherwise (the dataset's ``manual`` steps).

    The dataset object provides ``title``, ``root``, ``downloadable`` (bool), ``url`` and ``manual``.
    """

    def __init__(self, dataset, looked_for: str | None = None, download: bool = False):
        self.dataset = dataset
        title = getattr(dataset, "title", type(dataset).__name__)
        where = f"{title} not found under {getattr(dataset, 'root', '?')}"
        if looked_for:
            where += f" (no {looked_for})"
        manual = getattr(dataset, "manual", "") or f"get it from {getattr(dataset, 'url', 'its authors')}"
        if getattr(dataset, "downloadable", False):
            cli = getattr(dataset, "download_command", None)  # e.g. "rscir-kit ucm download"
            how = f"Run `{cli}` (Python: download=True)" if cli else "Pass download=True"
            hint = f"{how} to fetch it from {dataset.url}, or {manual}."
        else:
            hint = (f"It cannot be downloaded automatically{' (download=True cannot do this step)' if download else ''}:"
                    f" {manual}.")
        super().__init__(f"{where}. {hint}")


class ParameterError(RscirError, ValueError):
    """A bad parameter value (λ outside [0, 1], unknown method or normalisation, bad option...)."""


class OutputError(RscirError, OSError):
    """An output cannot be written (disk full, read-only folder, no permission); the message names the path."""


class BusyError(RscirError):
    """Another run holds the lock of this output (extraction, index build); wait for it or choose another output."""
