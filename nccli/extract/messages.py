"""Pieces of one-line error messages: close-name suggestions and the first line of a library's error."""

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """``"; did you mean 'a', 'b'?"`` for the closest candidates, or ``""`` when none is close."""
    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
    return "; did you mean " + ", ".join(f"'{match}'" for match in close) + "?" if close else ""


def first_line(error: BaseException) -> str:
    """The first line of an error's message (libraries' messages can run to a traceback)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
