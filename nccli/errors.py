"""nccli's errors: one root the CLI turns into a one-line message and exit code 2.

Anything that is not an :class:`NcCliError` is a bug and keeps its traceback.
"""

import sys
import unicodedata
import warnings
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


class NcCliError(Exception):
    """An error the user can fix: bad input, bad options, an unwritable output."""


class FeatureFileError(NcCliError):
    """A feature file that does not follow ``docs/feature-file.md``.

    The message names the file, the path inside it and what is wrong.
    """

    def __init__(self, file: str, path: str, problem: str):
        self.file, self.path, self.problem = file, path, problem
        where = f"'{file}'" if not path else f"'{file}': '/{path.lstrip('/')}'"
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):  # rebuild from the parts when it crosses a process boundary
        return type(self), (self.file, self.path, self.problem)


class UsageError(NcCliError):
    """Options that cannot work together or name things that do not exist."""


class OutputError(NcCliError):
    """An output that cannot be written where the user asked."""


class ModelError(NcCliError):
    """A model name, architecture or checkpoint that cannot be loaded."""


class DataError(NcCliError):
    """A dataset that cannot be read or has invalid labels."""


class DistributedError(NcCliError):
    """A torchrun job whose processes cannot finish together: a rank failed or lost its peers.

    ``echo`` is False on the ranks whose failure rank 0 reports for them, so that a job prints one
    line, not one per process.
    """

    def __init__(self, message: str, echo: bool = True):
        self.echo = echo
        super().__init__(message)

    def __reduce__(self):
        return type(self), (str(self), self.echo)


class DegenerateMetricWarning(UserWarning):
    """A metric undefined for this data (K < 2, coincident means, ...): reported as null."""


def warn_caller(warning: Warning) -> None:
    """Issue ``warning`` attributed to the first frame outside nccli: the user's line that called the library."""
    frame, level = sys._getframe(1), 2  # stacklevel 2: the function that called this one
    while frame is not None and Path(frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(warning, stacklevel=level)


def first_line(error: BaseException) -> str:
    """The first line of an error's message (libraries' messages can run to a traceback)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def printable(text: str) -> str:
    """``text`` safe for a terminal: control and format characters (escape sequences, newlines, bidirectional
    overrides), which names read from files may hold, written as escapes (``\\x1b``, ``\\u202e``)."""
    return "".join(
        char.encode("unicode_escape").decode("ascii") if unicodedata.category(char) in ("Cc", "Cf") else char
        for char in text
    )
