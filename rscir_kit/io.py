"""Safe file I/O: atomic writes, output errors as one line, UTF-8 text reading, run locks and leftovers.

* Atomic writes: a temp file in the target's folder, fsync, then ``os.replace``. Readers never see a half-written
  file, and an interrupted write leaves the previous file untouched.
* :func:`output_errors`: a full disk, a read-only folder or a missing permission while writing becomes one
  :class:`~rscir_kit.errors.OutputError` line naming the path ("disk full", "read-only", ...).
* :func:`read_text`: UTF-8 (a leading byte-order mark is accepted); other encodings are refused naming the line.
* :func:`run_lock`: a ``filelock`` lock beside an output, so two runs never write one output at once.
* :func:`remove_temp_files`: the temp files an interrupted atomic write leaves behind (cleaned under the lock).
"""
from __future__ import annotations

import contextlib
import errno
import functools
import glob
import hashlib
import http.client
import os
import tempfile
import urllib.request
import warnings
from pathlib import Path
from typing import Callable

from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from .errors import BusyError, DataError, OutputError


@functools.cache
def _umask() -> int:
    """The process umask, read on first use (not at import). Linux reports it in /proc/self/status; elsewhere it
    can only be read by setting it, so it is set back at once (done once per process)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def output_problem(exc: BaseException) -> str | None:
    """"disk full", "read-only" or "permission denied" when ``exc`` is such a write failure, else None."""
    if not isinstance(exc, OSError):
        return None
    if exc.errno in _DISK_FULL or "requested and" in str(exc) and "written" in str(exc):  # numpy's short write
        return "disk full"
    if exc.errno == errno.EROFS:
        return "read-only file system"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return None


@contextlib.contextmanager
def output_errors(path, what: str = "output"):
    """Turn a full disk / read-only folder / permission error inside the block into one OutputError line.

    ``path``: the output being written (named in the message); other exceptions pass through unchanged.
    """
    try:
        yield
    except OutputError:
        raise
    except OSError as exc:
        problem = output_problem(exc)
        if problem is None:
            raise
        hint = {"disk full": "free some space or write elsewhere",
                "read-only file system": "write to a writable folder",
                "permission denied": "write to a folder you can write to"}[problem]
        raise OutputError(exc.errno, f"cannot write {what} {path}: {problem} ({exc.strerror or exc}); {hint}") \
            from exc


def check_output_path(path, kind: str = "file", option: str = "--out") -> Path:
    """Refuse an output path of the wrong kind before any work: a folder where a file goes, or the reverse."""
    path = Path(path)
    if kind == "file" and path.is_dir():
        raise DataError(f"{option} {path} is a folder; give a file name (e.g. {path / 'results.csv'})")
    if kind == "dir" and path.exists() and not path.is_dir():
        raise DataError(f"{option} {path} is a file; give a folder name (it will be created)")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise DataError(f"{option} {path}: {parent} is a file, not a folder")
            break
    return path


@contextlib.contextmanager
def atomic_path(path, suffix: str | None = None):
    """Yield a temporary path beside ``path``; on success it atomically replaces ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched. ``suffix``
    defaults to the target's suffix (numpy's ``savez`` appends ``.npz`` to names without it).
    Full disks and read-only folders raise :class:`OutputError` (one line naming ``path``).
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"cannot write {path}: it is a folder; give a file name")
    with output_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TMP_MARK}", suffix=path.suffix if suffix is None else suffix,
                                   dir=path.parent)
        os.close(fd)
        try:
            yield Path(tmp)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


#: Follows the target's name in every temp file of :func:`atomic_path` (``.<name>.tmp-XXXX<suffix>``), so the
#: leftovers of a killed write can be told apart from other files.
TMP_MARK = ".tmp-"


def remove_temp_files(path) -> list[Path]:
    """Delete the temp files that killed atomic writes of ``path`` left beside it; returns what was removed.

    Call it only while holding ``path``'s :func:`run_lock` (a live run's temp file looks the same).
    """
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    for f in path.parent.glob(f".{glob.escape(path.name)}{TMP_MARK}*"):
        if f.is_file():
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
                removed.append(f)
    return removed


def lock_path(path) -> Path:
    """The lock file guarding output ``path``: ``.<name>.lock`` beside it (kept; filelock reuses it)."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def run_lock(path, what: str = "run"):
    """Hold the lock of output ``path`` for the block; BusyError at once if another process holds it."""
    path = Path(path)
    lock_file = lock_path(path)
    with output_errors(lock_file, "lock file"):
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(lock_file))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise BusyError(f"{path} is being written by another {what} right now (lock {lock_file} is held): wait "
                            "for it to finish, or choose another output; its unfinished work is not touched") from None
    try:
        yield
    finally:
        lock.release()


def atomic_write(path, write: Callable, mode: str = "wb") -> Path:
    """Call ``write(fileobj)`` on a temp file opened with ``mode``, fsync it, then move it to ``path``."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def read_text(path, what: str = "file") -> str:
    """Text of a UTF-8 file (a byte-order mark is dropped); DataError naming the line of a non-UTF-8 byte."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: {what} is not UTF-8 (byte 0x{data[exc.start]:02x}); re-save it as "
                        "UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def write_text_atomic(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda fh: fh.write(text), mode="w")


def download_file(url: str, dest: Path, md5: str | None = None, desc: str | None = None) -> Path:
    """Download ``url`` to ``dest`` with a tqdm bar, resumably.

    Bytes go to ``<dest>.part``; an interrupted download resumes from there (HTTP ``Range``; a server that ignores
    it sends the whole file, which then replaces the part). On completion the part file is moved to ``dest``.
    ``md5``: expected digest; a mismatch only warns (callers verify the content's structure).
    Raises DataError (with the URL) when the download fails.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            resumed = have > 0 and resp.status == 206
            length = int(resp.headers.get("Content-Length") or 0)
            total = (have + length if resumed else length) or None
            with open(part, "ab" if resumed else "wb") as out, \
                    tqdm(total=total, initial=have if resumed else 0, unit="B", unit_scale=True,
                         desc=desc or dest.name) as bar:
                while True:
                    chunk = resp.read(1 << 20)
                    if not chunk:
                        break
                    out.write(chunk)
                    bar.update(len(chunk))
                out.flush()
                os.fsync(out.fileno())
            if total is not None and part.stat().st_size != total:
                raise OSError(f"connection closed after {part.stat().st_size} of {total} bytes; run again to resume")
    except (OSError, http.client.HTTPException) as exc:  # IncompleteRead (a cut connection) is an HTTPException
        if getattr(exc, "code", None) == 416:  # range not satisfiable: the part file is stale
            part.unlink(missing_ok=True)
        raise DataError(f"could not download {url} ({exc}). Run again to resume, or download it by hand and put it "
                        f"at {dest}.") from exc
    if md5 is not None:
        digest = hashlib.md5()
        with open(part, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
        if digest.hexdigest() != md5:
            warnings.warn(f"{dest}: MD5 {digest.hexdigest()} differs from the recorded {md5}; "
                          f"checking the extracted content instead.", stacklevel=2)
    os.replace(part, dest)
    return dest
