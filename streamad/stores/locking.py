"""Who may write a store, and when its files may change under a reader.

Two lock files sit beside a store ``NAME`` (inside it, zarr would warn about foreign files):

- ``.NAME.lock``: one writer at a time. Held with ``flock`` for the writer's life and stamped
  with its pid and host, so the second writer's error names the holder. The kernel drops an
  ``flock`` when its process dies, so a lock left by a killed writer is recovered by the next.
- ``.NAME.readers``: shared by readers while they load a generation, exclusive for a writer
  while it deletes old generations or swaps a replacement in, so a reader never sees the
  files it is reading disappear.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from streamad.errors import StoreLockedError


def lock_path(store: Path, kind: str) -> Path:
    """``.NAME.<kind>`` beside the store ``NAME``."""
    return store.parent / f".{store.name}.{kind}"


class WriterLock:
    """The exclusive writer lock of the store at ``path``.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "m.zarr"
        >>> lock = WriterLock(path)
        >>> WriterLock(path)
        Traceback (most recent call last):
        ...
        streamad.errors.StoreLockedError: expected to be the only writer of ...
        >>> lock.release()
    """

    def __init__(self, path: str | Path) -> None:
        self.store = Path(path)
        self.path = lock_path(self.store, "lock")
        self._fd: int | None = None
        while self._fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _holder(fd)
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                raise StoreLockedError(
                    f"expected to be the only writer of {self.store}, got {holder} writing it (lock {self.path}); hint: wait for that run to finish, or stop it"
                ) from None
            # A releasing writer unlinks the file: if ours was unlinked before we locked it,
            # someone may hold a newer file under the same name, so start again.
            if not _same_file(fd, self.path):
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
            self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Give the lock up (the file is removed while still locked, so no one waits on it)."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit the kernel releases it anyway
            self.release()


def _holder(fd: int, *, tries: int = 50) -> str:
    """Who holds the lock, as its holder stamped it; the holder writes right after locking, so
    an empty file is read again for up to ``tries`` x 10 ms."""
    for _ in range(tries):
        text = os.pread(fd, 256, 0).decode(errors="replace").strip()
        if text:
            return text
        time.sleep(0.01)
    return "another process"


@contextlib.contextmanager
def readers(path: str | Path, *, exclusive: bool = False) -> Iterator[None]:
    """Hold the readers lock of the store at ``path``: shared to read a generation, exclusive
    (a writer) to delete or replace files readers may be reading. Where the lock file cannot be
    created (a read-only folder) there can be no writer either, and reading goes on unlocked.

    The last holder out removes the file (taking it exclusively first, so no holder loses it);
    one who locked a file that was removed meanwhile takes the new one, as :class:`WriterLock`
    does, so no ``.NAME.readers`` is left beside a store that was only read.
    """
    lock = lock_path(Path(path), "readers")
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            yield
            return
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        if _same_file(fd, lock):
            break
        os.close(fd)
    try:
        yield
    finally:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # no one else holds it: the last one out
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
        except OSError:
            pass  # held by another reader, who removes it
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    """Whether the open ``fd`` is still the file at ``path`` (not one removed meanwhile)."""
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False
