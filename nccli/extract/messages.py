"""Close-name suggestions for one-line error messages ("did you mean ...")."""

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """``"; did you mean 'a', 'b'?"`` for the closest candidates, or ``""`` when none is close."""
    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
    return "; did you mean " + ", ".join(f"'{match}'" for match in close) + "?" if close else ""
