"""Files and directories in a directory others may be able to write to.

Whoever can write the store's directory can put anything under the names we use: a
FIFO (an ``open`` that blocks for ever), a symlink to ``/dev/zero`` (a read that
never ends) or to a file of the operator's (which we would overwrite or delete). So
every file we open there is opened without following a symlink and without
blocking, must be a regular file, and is read only up to a bound; and every
directory we create is private to its owner, whatever the umask.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

__all__ = [
    "SQLITE_HEADER",
    "NotRegularFileError",
    "check_store_path",
    "create_private_file",
    "make_private_dirs",
    "open_regular",
    "read_bounded",
]

# The first 16 bytes of every SQLite database file.
SQLITE_HEADER = b"SQLite format 3\x00"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class NotRegularFileError(OSError):
    """A path we would open is a symlink, FIFO, device or directory."""


def make_private_dirs(directory: str | os.PathLike[str]) -> None:
    """Create ``directory`` and any missing parents, each mode 0700.

    ``Path.mkdir(parents=True, mode=...)`` gives the mode to the last directory only;
    the parents get ``0777 & ~umask``, which is 0777 under umask 000. Directories that
    exist already are left as they are: they are not ours.
    """
    d = Path(directory)
    missing: list[Path] = []
    while not d.exists() and not d.is_symlink():
        missing.append(d)
        if d.parent == d:
            break
        d = d.parent
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue  # made meanwhile by another process: not ours to change
        os.chmod(path, 0o700)  # the umask may have taken the owner's bits too


def open_regular(path: str | os.PathLike[str], flags: int, mode: int = 0o600) -> int:
    """``os.open`` that never follows a symlink, never blocks on a FIFO, and returns a
    descriptor of a regular file only (else raises NotRegularFileError, or the
    OSError of the open)."""
    try:
        fd = os.open(path, flags | _NOFOLLOW | _NONBLOCK | _CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotRegularFileError(errno.ELOOP, "is a symlink", str(path)) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFileError(errno.EINVAL, "not a regular file", str(path))
        if _NONBLOCK:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_bounded(fd: int, limit: int) -> bytes:
    """At most ``limit`` bytes from ``fd``, from where it is."""
    chunks: list[bytes] = []
    left = limit
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def check_store_path(path: Path, *, create: bool) -> bool:
    """Refuse a store path that is not ours to open: return True when a new store file
    is to be created there, False when one exists; raise NotRegularFileError (with a
    message naming what to do) when the path is a symlink that does not point to an
    existing store, or something other than a regular file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return True
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.stat(path)
        except OSError:
            raise NotRegularFileError(
                errno.ELOOP,
                "is a symlink to nothing; refusing to create the store at its target "
                "(point it at an existing store, or remove it)",
                str(path),
            ) from None
        if not stat.S_ISREG(target.st_mode) or not _has_sqlite_header(path):
            raise NotRegularFileError(
                errno.ELOOP,
                "is a symlink to a file that is not an otel-delivery store; refusing to "
                "write to it (point it at an existing store, or remove it)",
                str(path),
            )
        return False
    if stat.S_ISDIR(st.st_mode):
        return False  # reported by the caller, as before
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFileError(
            errno.EINVAL, "is not a regular file (a FIFO, socket or device?)", str(path)
        )
    return False


def _has_sqlite_header(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | _NONBLOCK | _CLOEXEC)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        return os.read(fd, len(SQLITE_HEADER)) == SQLITE_HEADER
    finally:
        os.close(fd)


def create_private_file(path: Path) -> None:
    """Create an empty file readable by its owner only, in a directory made private if
    it is new; never through a symlink. A file made meanwhile by another process (two
    writers creating the same store) is left to the checks of the caller."""
    make_private_dirs(path.parent)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | _NOFOLLOW | _CLOEXEC, 0o600)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
