"""Atomic file writes: a temp file in the target's folder, fsync, then ``os.replace``.

Readers never see a half-written file, and an interrupted write leaves the previous file untouched.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable

from .errors import DataError


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()


@contextlib.contextmanager
def atomic_path(path, suffix: str | None = None):
    """Yield a temporary path beside ``path``; on success it atomically replaces ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched. ``suffix``
    defaults to the target's suffix (numpy's ``savez`` appends ``.npz`` to names without it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix if suffix is None else suffix,
                               dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write(path, write: Callable, mode: str = "wb") -> Path:
    """Call ``write(fileobj)`` on a temp file opened with ``mode``, fsync it, then move it to ``path``."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def write_text_atomic(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda fh: fh.write(text), mode="w")


def download_file(url: str, dest: Path, md5: str | None = None, desc: str | None = None) -> Path:
    """Download ``url`` to ``dest`` (temp file + ``os.replace``), with a tqdm bar.

    ``md5``: expected digest; a mismatch only warns (callers verify the content's structure).
    Raises DataError (with the URL) when the download fails.
    """
    import urllib.request

    from tqdm.auto import tqdm

    dest = Path(dest)
    digest = hashlib.md5()
    try:
        with atomic_path(dest, suffix=".part") as tmp, open(tmp, "wb") as out, \
                urllib.request.urlopen(url, timeout=60) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=desc or dest.name) as bar:
                while True:
                    chunk = resp.read(1 << 20)
                    if not chunk:
                        break
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except OSError as exc:
        raise DataError(f"could not download {url} ({exc}). Download it by hand and put it at {dest}.") from exc
    if md5 is not None and digest.hexdigest() != md5:
        warnings.warn(f"{dest}: MD5 {digest.hexdigest()} differs from the recorded {md5}; "
                      f"checking the extracted content instead.", stacklevel=2)
    return dest
