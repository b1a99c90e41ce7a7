"""Running the command line (and the benchmark scripts) in tests, and what every refusal must look like."""

import importlib
import sys
from pathlib import Path

from typer.testing import CliRunner

from nccli.cli import app

BENCHMARKS = Path(__file__).parent / "benchmarks"


def invoke(*args):
    """Invoke the CLI in this process; stdout and stderr stay separate."""
    return CliRunner().invoke(app, [str(arg) for arg in args])


def assert_user_error(result, *fragments: str) -> str:
    """Exit code 2, one line on stderr naming ``fragments``, no traceback; the line."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def invoke_with_columns(width, *args):
    """Invoke the CLI as if the terminal were ``width`` columns wide."""
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": str(width)})


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def load_benchmark(name: str):
    """A script of tests/benchmarks as a module (they are scripts, not a package; the kill harness's
    children import it by name)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)
