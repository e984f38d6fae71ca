"""The layering of docs/ARCHITECTURE.md, enforced: import-linter contracts (pyproject.toml) kept, every module of the
package placed in them, and the CLI's start-up free of heavy modules."""
import subprocess
import sys
import tomllib
from pathlib import Path

import rscir_kit

REPO = Path(__file__).resolve().parents[1]
PACKAGE = Path(rscir_kit.__file__).resolve().parent
ENTRY = {"rscir_kit.__init__", "rscir_kit.__main__"}


def _contracts():
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_import_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint), "--config", str(REPO / "pyproject.toml")], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_every_module_has_a_layer():
    placed = {m for c in _contracts() for m in c["source_modules"] + c["forbidden_modules"]}
    modules = {f"rscir_kit.{p.stem}" for p in PACKAGE.glob("*.py")} | {
        f"rscir_kit.{p.name}" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    unplaced = sorted(modules - placed - ENTRY - {"rscir_kit.data"})
    assert not unplaced, f"place {unplaced} in a layer (pyproject.toml [tool.importlinter], docs/ARCHITECTURE.md)"


def test_cli_help_imports_no_heavy_module():
    code = ("import sys, io, contextlib\nfrom rscir_kit import cli\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n        cli.main(['--help'])\n    except SystemExit:\n        pass\n"
            "    for argv in (['evaluate', '--help'], ['search', '--help'], ['extract', '--help']):\n"
            "        try:\n            cli.build_parser().parse_args(argv)\n        except SystemExit:\n            pass\n"
            "print(sorted(m for m in ('torch', 'open_clip', 'faiss', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
