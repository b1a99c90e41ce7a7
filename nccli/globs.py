"""Globs: quoted file arguments, and ``--layers`` names; one rule for every command.

``nccli analyze 'test/*.h5'``, ``nccli info 'test/*.h5'``, ``nccli plot 'runs/*/train.parquet'`` and
``--means-from 'train/*.h5'`` (and a folder of references) expand here. An argument that names an
existing path is that path, even with glob characters in it (``run[1].h5``); any other argument with
``*``, ``?`` or ``[`` is a pattern, replaced in place by the files it matches (folders left out) in
natural order: runs of digits compare as numbers, so ``epoch_2.h5`` comes before ``epoch_10.h5`` (the
shell would put it after). A pattern that matches no file is refused. Nothing is de-duplicated: a file
named twice, by a path and a pattern or by two patterns, is named twice, as when the shell expands it.
"""

import fnmatch
import glob
import os
import re
from collections.abc import Iterable

from nccli.errors import UsageError

_DIGITS = re.compile(r"(\d+)")


def natural_key(path: str) -> tuple:
    """Sort key: digit runs by value (``epoch_2`` < ``epoch_10``), the rest as text; equal values by the text."""
    parts = _DIGITS.split(path)  # text at even places, digit runs at odd ones: like compares with like
    return tuple(int(part) if index % 2 else part for index, part in enumerate(parts)), path


def is_glob(argument: str) -> bool:
    """A pattern to expand: glob characters, and not the name of an existing path."""
    return glob.has_magic(argument) and not os.path.exists(argument)


def glob_files(pattern: str) -> list[str]:
    """The files ``pattern`` matches (folders left out), in natural order; possibly none."""
    return sorted((path for path in glob.glob(pattern) if os.path.isfile(path)), key=natural_key)


def expand_globs(arguments: Iterable[str], what: str = "pattern") -> list[str]:
    """``arguments`` with each pattern replaced, in place, by the files it matches in natural order; other
    arguments as given. A pattern that matches no file is refused: ``{what} '<pattern>' matches no file``."""
    expanded = []
    for argument in arguments:
        if not is_glob(argument):
            expanded.append(argument)
            continue
        found = glob_files(argument)
        if not found:
            raise UsageError(f"{what} '{argument}' matches no file")
        expanded.extend(found)
    return expanded


def names_matching(pattern: str, names: Iterable[str]) -> list[str]:
    """The names ``pattern`` selects (``--layers`` of extract and analyze alike): itself when it is one of
    ``names`` (a layer may have ``[`` in its name), else, when it has glob characters, every name it matches
    (``fnmatch``, case-sensitive), in ``names``' order; possibly none."""
    names = list(names)
    if pattern in names:
        return [pattern]
    return [name for name in names if glob.has_magic(pattern) and fnmatch.fnmatchcase(name, pattern)]
