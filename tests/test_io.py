"""Atomic writes: the replaced file gets the usual permissions, and importing the kit changes no process state."""
import os
import subprocess
import sys

from rscir_kit.io import atomic_write


def test_atomic_write_gives_umask_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        from rscir_kit import io

        io._umask.cache_clear()
        path = atomic_write(tmp_path / "f.txt", lambda fh: fh.write("x"), mode="w")
        assert oct(path.stat().st_mode & 0o777) == oct(0o640) and path.read_text() == "x"
    finally:
        os.umask(old)
        io._umask.cache_clear()


def test_import_has_no_umask_side_effect():
    """Before: importing rscir_kit.io flipped the process umask at import time."""
    code = ("import os, sys; sys.setswitchinterval(1e-6); old = os.umask(0o077); "
            "import rscir_kit.io, rscir_kit.cli; assert os.umask(old) == 0o077; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr
