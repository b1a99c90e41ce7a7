"""One writer per output: an advisory lock beside each file nccli writes.

:class:`OutputLock` takes an exclusive ``flock`` on ``FILE.lock`` (created
beside ``FILE``) and writes its owner into it: process id, host, start time
and command line. A second process that wants to write ``FILE`` fails at once
with an :class:`~nccli.errors.OutputError` naming that owner, instead of
interleaving its writes with the first one's. The kernel drops the lock when
its process ends, however it ends, so a SIGKILLed writer leaves no stale
lock: at most an unlocked ``FILE.lock``, which the next writer takes over.
Releasing deletes the file while still holding the lock; a process that
opened the old file just before checks, once it holds the lock, that the file
is still the one at ``FILE.lock`` and starts again if not.
"""

import contextlib
import errno
import fcntl
import os
import shlex
import socket
import stat
import sys
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Self

from nccli.errors import OutputError

LOCK_SUFFIX = ".lock"
MAX_OWNER_CHARS = 300


def lock_path(path: str | os.PathLike) -> str:
    return os.fspath(path) + LOCK_SUFFIX


def _owner() -> str:
    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("?")
    is_nccli = program.name == "nccli" or program.parent.name == "nccli"  # the console script, python -m nccli
    command = shlex.join(["nccli", *sys.argv[1:]]) if is_nccli else shlex.join(sys.argv) or "?"
    since = datetime.now().isoformat(sep=" ", timespec="seconds")
    text = f"pid {os.getpid()} on {socket.gethostname()} since {since}: {command}"
    return text[:MAX_OWNER_CHARS]


class OutputLock:
    """An exclusive lock on writing ``path``; :meth:`acquire` refuses at once if another process holds it."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._fd: int | None = None

    def acquire(self) -> Self:
        name = lock_path(self.path)
        while self._fd is None:
            try:  # never through a planted link: a lock file is nccli's own, a regular file of one name
                fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
            except OSError as error:
                why = "it is a symbolic link" if error.errno == errno.ELOOP else error.strerror
                raise OutputError(
                    f"cannot write '{self.path}': cannot create its lock file '{name}': {why}; remove it"
                ) from None
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode) or status.st_nlink > 1:
                os.close(fd)
                raise OutputError(
                    f"cannot write '{self.path}': its lock file '{name}' is not nccli's (a special file or another "
                    "file's hard link); remove it"
                )
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_owner(fd)
                os.close(fd)
                raise OutputError(
                    f"'{self.path}' is being written by another process ({owner}); wait for it to finish or write "
                    f"somewhere else (lock file '{name}')"
                ) from None
            except OSError as error:  # a filesystem without locks: go on unlocked rather than refuse to work
                os.close(fd)
                if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP):
                    raise OutputError(f"cannot lock '{name}': {error.strerror}") from None
                return self
            if _same_file(fd, name):
                os.ftruncate(fd, 0)
                os.write(fd, (_owner() + "\n").encode())
                self._fd = fd
            else:  # released and deleted by its last holder between our open and our lock: take the new one
                os.close(fd)
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.remove(lock_path(self.path))
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def locked(paths: Iterable[str | os.PathLike]) -> Iterator[list[OutputLock]]:
    """Hold the locks of all ``paths`` (each once) for the block; refuse if any is held elsewhere."""
    with contextlib.ExitStack() as stack:
        unique = {os.path.abspath(path): path for path in paths}
        yield [stack.enter_context(OutputLock(path)) for path in unique.values()]


def _read_owner(fd: int) -> str:
    try:
        text = os.pread(fd, MAX_OWNER_CHARS + 1, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "owner unknown"


def _same_file(fd: int, name: str) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(name))
    except FileNotFoundError:
        return False
