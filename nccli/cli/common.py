"""What every command shares: the error boundary, the command line for provenance, terminal checks, list parsing.

Errors the user can fix (:class:`nccli.errors.NcCliError`) become one line on
stderr and exit code 2; anything else is a bug and keeps its traceback.
"""

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import typer
from typer.core import TyperGroup

try:
    from typer._click.exceptions import ClickException  # typer ≥ 0.25 carries its own click
except ImportError:  # pragma: no cover - older typer uses click itself
    from click.exceptions import ClickException

from nccli.errors import DegenerateMetricWarning, NcCliError, UsageError, printable

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def echo_error(message: str) -> None:
    """One line for a person, on stderr."""
    typer.echo(message, err=True)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Print nccli's own warnings as one plain line; others the usual way."""
    if issubclass(category, DegenerateMetricWarning):
        echo_error(f"warning: {printable(str(message))}")
    else:
        echo_error(warnings.formatwarning(message, category, filename, lineno, line).rstrip())


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """The error boundary of every command: NcCliError → one line, exit 2; Ctrl-C → exit 130."""
    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        yield
    except NcCliError as error:
        if getattr(error, "echo", True):  # under torchrun, rank 0 prints the job's error once
            echo_error(f"error: {printable(str(error))}")
        raise typer.Exit(EXIT_USER_ERROR) from None
    except KeyboardInterrupt:
        echo_error("interrupted")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        warnings.showwarning = previous


class OneLineUsageErrors(TyperGroup):
    """The ``nccli`` group: a usage error (an unknown option, a bad value, a missing argument) is one ``error:``
    line naming the command's help, exit 2, instead of typer's boxed usage text."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode: bool = True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except ClickException as error:
            message = printable(error.format_message()).rstrip(".")
            if message:  # no message: the help was shown instead (`nccli` with no command)
                where = getattr(getattr(error, "ctx", None), "command_path", None) or prog_name or "nccli"
                echo_error(f"error: {message}; see `{where} --help`")
            sys.exit(error.exit_code)
        sys.exit(code if isinstance(code, int) else 0)


def command_line(context: typer.Context) -> str:
    """The command as the user typed it, for provenance; rebuilt from the parsed options under another host
    (tests, notebooks), where ``sys.argv`` is the host's."""
    import shlex

    program = Path(sys.argv[0])
    if program.name == "nccli" or program.parent.name == "nccli":  # the console script, or python -m nccli
        return shlex.join(["nccli", *sys.argv[1:]])
    options = []
    for name, value in context.params.items():
        if value in (None, False, ()) or value == []:
            continue
        flag = "--" + name.replace("_", "-")
        values = value if isinstance(value, (list, tuple)) else [value]
        options += [flag] if value is True else [item for v in values for item in (flag, str(v))]
    return shlex.join(["nccli", context.info_name, *options])


def stderr_is_terminal() -> bool:
    """Progress bars and tables for people appear only on a terminal."""
    return sys.stderr.isatty()


def numbers(option: str, text: str | None, kind: type = float) -> tuple | None:
    """``"0.5,0.2"`` → ``(0.5, 0.2)``; a one-line error naming the option otherwise."""
    if text is None:
        return None
    try:
        return tuple(kind(part) for part in text.split(","))
    except ValueError:
        noun = "integers" if kind is int else "numbers"
        raise UsageError(f"{option} takes comma-separated {noun}, got '{text}'") from None


def split_list(text: str | None) -> tuple[str, ...] | None:
    """'a, b,c' → ('a', 'b', 'c'); None or empty → None."""
    items = tuple(item.strip() for item in (text or "").split(",") if item.strip())
    return items or None


def table_console(stderr: bool = False):
    """A rich console for people: a terminal's width (or ``COLUMNS``); into a file or pipe, room for every column."""
    from rich.console import Console

    if stderr:
        return Console(stderr=True)
    return Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 10_000)


TABLE_ROWS_MAX = 1_000  # rows a table for people shows; the formats for pipes show every row


def print_table(table, title: str, advice: str, stderr: bool = False) -> None:
    """A report table for a person that fits the console without breaking a number; columns left out to fit are
    named in a one-line note on stderr, with ``advice`` on how to choose them. Beyond ``TABLE_ROWS_MAX`` rows
    (a pair table, or a hostile file declaring millions), the first rows and a note."""
    from nccli.report.formats import to_rich

    console = table_console(stderr)
    if table.num_rows > TABLE_ROWS_MAX:
        echo_error(
            f"note: showing the first {TABLE_ROWS_MAX} of {table.num_rows} rows; --format csv, tsv or json show "
            "every row"
        )
        table = table.slice(0, TABLE_ROWS_MAX)
    shown, left_out = to_rich(table, title=title, width=console.width)
    console.print(shown)
    note_left_out(left_out, console.width, advice)


def report_written(result, out) -> None:
    """What ``analyze`` and ``measure`` say once the report at ``out`` is written: the result's notes, the summary
    on a terminal, and the path on stdout; under torchrun rank 0 alone says it, for the job."""
    from nccli import schema
    from nccli.distributed import main_process
    from nccli.report.formats import compact
    from nccli.report.parquet import to_table

    if not main_process():
        return
    for note in result.notes:
        echo_error(f"note: {note}")
    if stderr_is_terminal():
        summary = to_table(result.summary, schema.SUMMARY_COLUMNS, {})
        advice = f"choose columns with `nccli report {out} --columns ...`"
        print_table(compact(summary), title=f"neural collapse → {out}", advice=advice, stderr=True)
    typer.echo(out)


def note_left_out(columns: list[str], width: int, advice: str) -> None:
    """One line on stderr naming the columns a table left out to fit the terminal, and how to see them."""
    if columns:
        echo_error(f"note: {len(columns)} columns left out to fit {width} characters: {', '.join(columns)}; {advice}")
