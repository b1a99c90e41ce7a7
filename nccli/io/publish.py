"""Publishing files atomically: the one way nccli puts a finished file where the user asked for it.

Each file is written under a temporary name beside its target
(``.NAME.<12 hex digits>.tmp``, created exclusively with the permissions of any
new file under the user's umask), flushed to disk, renamed over the target and
the folder flushed: a reader sees the earlier file or the complete new one,
never half of it, and a crash or kill leaves the earlier file untouched.
:class:`Staged` publishes several files together (all are complete before any
is renamed, and Ctrl-C or SIGTERM waits until the last rename is done: the
set is renamed whole or not at all), :func:`publish` one. A writer that was
killed leaves its temporary files behind: :func:`remove_stale` deletes exactly
those (names of that shape only, never a pattern built from the target's name).
"""

import contextlib
import os
import re
import secrets
import signal
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Self

from nccli.errors import OutputError

TEMPORARY_SUFFIX = ".tmp"
_TOKEN_DIGITS = 12  # hex digits of the random part of a temporary name


def _folder(target: Path) -> Path:
    return target.parent if str(target.parent) else Path(".")


def _temporary_name(target: Path) -> re.Pattern:
    return re.compile(re.escape(f".{target.name}.") + f"[0-9a-f]{{{_TOKEN_DIGITS}}}" + re.escape(TEMPORARY_SUFFIX))


def cannot_write(error: OSError, target) -> OutputError:
    """The one-line error of a file that could not be written."""
    return OutputError(f"cannot write '{error.filename or target}': {error.strerror or error}")


def remove_stale(target: Path) -> None:
    """Delete the temporary files a killed writer of ``target`` left beside it (call while holding its lock)."""
    pattern = _temporary_name(target)
    with contextlib.suppress(OSError), os.scandir(_folder(target)) as entries:
        for entry in entries:
            if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def sync(path) -> None:
    """Flush a file's data (or a folder's renames) to disk, so a rename never exposes an unwritten file."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM (Ctrl-C, torchrun stopping a rank) that arrive during the block act once it is done.

    Their handlers are swapped, not the signal mask: any thread of the process may receive a signal, and
    Python runs its handler in the main thread, the only one that can swap them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    numbers = (signal.SIGINT, signal.SIGTERM)
    previous = {number: signal.signal(number, lambda number, frame: caught.append(number)) for number in numbers}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if caught:
            signal.raise_signal(caught[0])


class Staged:
    """A temporary file beside each target, renamed into place by :meth:`commit`; whatever is left is removed
    on exit (an error, or no commit). ``committed``: the targets are in place."""

    def __init__(self, targets: Iterable[Path]):
        self.targets = [Path(target) for target in targets]
        self.temporary: dict[Path, Path] = {}
        self.flushed = self.committed = False

    def __enter__(self) -> Self:
        for target in self.targets:
            self.temporary[target] = self._create(target)
        return self

    @staticmethod
    def _create(target: Path) -> Path:
        while True:
            name = _folder(target) / f".{target.name}.{secrets.token_hex(_TOKEN_DIGITS // 2)}{TEMPORARY_SUFFIX}"
            try:
                os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o666))
                return name
            except FileExistsError:
                continue
            except OSError as error:
                raise cannot_write(error, target) from None

    def path(self, target: Path) -> Path:
        """The temporary file to write ``target``'s content into."""
        return self.temporary[Path(target)]

    def flush(self) -> None:
        """Flush every temporary file to disk (:meth:`commit` does it, unless done already)."""
        try:
            for temporary in self.temporary.values():
                sync(temporary)
        except OSError as error:
            raise cannot_write(error, error.filename) from None
        self.flushed = True

    def commit(self) -> None:
        """:meth:`flush`, then rename every file into place and flush the folders' renames, with Ctrl-C and
        SIGTERM held meanwhile."""
        if not self.flushed:
            self.flush()
        try:
            with _signals_held():
                for target, temporary in self.temporary.items():
                    os.replace(temporary, target)
                self.committed = True
                for folder in {_folder(target) for target in self.targets}:
                    sync(folder)
        except OSError as error:
            raise cannot_write(error, error.filename) from None

    def __exit__(self, *exc) -> None:
        for temporary in self.temporary.values():
            with contextlib.suppress(FileNotFoundError):
                os.remove(temporary)


@contextlib.contextmanager
def publish(target) -> Iterator[Path]:
    """Write ``target`` atomically: yields the temporary path to write, published when the block ends without
    an error (an ``OSError`` while writing becomes a one-line :class:`~nccli.errors.OutputError`)."""
    target = Path(target)
    with Staged([target]) as staged:
        try:
            yield staged.path(target)
        except OSError as error:
            raise cannot_write(error, target) from None
        staged.commit()
