"""The file object HDF5 writes feature files through: after the first failed write, nothing more reaches the disk.

When a write fails (disk full, a file-size limit, an I/O error), the HDF5
library keeps the unwritten metadata and retries it at every flush and close;
a file it cannot close leaves h5py to crash when the process exits (a
segmentation fault, measured with ``RLIMIT_FSIZE``). And after a failure
nothing more should be written anyway: the partial file's state as of its
last complete flush is consistent and described by ``rows_written``
(:mod:`nccli.io.writer`). So :class:`GuardedFile`, given to h5py as the file
(its ``fileobj`` driver), raises the first failure, which the writer reports,
and from then on accepts and drops every write, so that HDF5 closes the file
cleanly and leaves the disk as it was. Writes are ``pwrite`` calls repeated
until complete, so a short write is never taken for a whole one.
:class:`GuardedHdf5` is the h5py file on such a disk, closed together.
"""

import io
import os

import h5py


class GuardedFile(io.RawIOBase):
    """A file opened for HDF5 (``"w"``: created or truncated; ``"x"``: created, never through a link nor over
    an existing file; ``"r+"``: existing) that stops at its first failure."""

    def __init__(self, path: str, mode: str):
        super().__init__()
        created = {"w": os.O_CREAT | os.O_TRUNC, "x": os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW}
        flags = os.O_RDWR | created.get(mode, 0)
        self._fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), 0o644)
        self._position = 0
        self.failure: OSError | None = None

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: os.fstat(self._fd).st_size}[whence]
        self._position = base + offset
        return self._position

    def tell(self) -> int:
        return self._position

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view):
            count = os.preadv(self._fd, [view[done:]], self._position + done)
            if count == 0:  # past the end: zeros, as HDF5's own POSIX driver gives
                view[done:] = bytes(len(view) - done)
                break
            done += count
        self._position += len(view)
        return len(view)

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        if self.failure is None:
            try:
                done = 0
                while done < len(view):
                    done += os.pwrite(self._fd, view[done:], self._position + done)
            except OSError as error:
                self.failure = error
                raise
        self._position += len(view)
        return len(view)

    def truncate(self, size: int | None = None) -> int:
        size = self._position if size is None else size
        if self.failure is None:
            try:
                os.ftruncate(self._fd, size)
            except OSError as error:
                self.failure = error
                raise
        return size

    def flush(self) -> None:
        pass  # every write already went to the operating system

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


class GuardedHdf5:
    """An h5py file written through a :class:`GuardedFile`; ``handle`` is the h5py file. Closes both."""

    def __init__(self, path: str, mode: str, **options):
        self.disk, self.closed = GuardedFile(path, mode), False
        try:
            self.handle = h5py.File(self.disk, "w" if mode == "x" else mode, **options)
        except BaseException:
            self.disk.close()
            raise

    @property
    def failure(self) -> OSError | None:
        """The first write that failed (HDF5 may have swallowed it: check after every operation)."""
        return self.disk.failure

    def close(self) -> None:
        """Flush and close; after a failure, what HDF5 still writes is dropped, so closing succeeds."""
        if self.closed:
            return
        self.closed = True
        for step in (self.handle.flush, self.handle.close):
            try:
                step()
            except (OSError, RuntimeError):
                if self.failure is None:
                    raise
        if not self.handle.id.valid:
            self.disk.close()
        # else HDF5 still holds the file and closes it at exit, through the open disk, which drops the writes

    def __enter__(self):
        return self.handle

    def __exit__(self, *exc) -> None:
        self.close()


def failure_of(error: BaseException, *files: GuardedHdf5) -> OSError | None:
    """The I/O failure behind ``error``: a file's first failed write, else ``error`` if it is an OSError."""
    found = next((file.failure for file in files if file is not None and file.failure is not None), None)
    return found or (error if isinstance(error, OSError) else None)


def words(error: OSError) -> str:
    """The OS's words for an I/O error (``No space left on device``), else h5py's message."""
    return error.strerror or str(error)
