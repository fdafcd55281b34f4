"""A per-process file that keeps every row through a SIGKILL until it is committed.

A row is never committed on the caller's thread: a SQLite commit costs a hundred
microseconds or more, and may wait for the write lock. Each row (an inbound message,
an AI run, an enqueue, a receipt, an attempt's start before the send and its outcome
after) is appended here as one JSON line ``[kind, row]``, a single ``write(2)`` to the
page cache of a few microseconds, before the decorated call returns; then the
indexer (``_indexer.py``) commits it with others. So a process killed at any point
leaves every row it recorded in its journal, not nowhere.

Each writer appends to files named ``<store>-journal-<pid>-<token>`` beside the
store (eight hex digits of token), each starting with the line :data:`HEADER`,
holding an exclusive ``flock(2)`` on each for as long as it lives; the kernel
lets go of the lock however the process dies. A file is deleted once every row in it
has been committed (or counted as lost), and emptied when every row it holds is
committed. :func:`~local_store._replay.replay_orphans` commits the rows of
files that no living process holds (and touches no file without that exact name
and first line): ``open_store`` runs it for every writable open
(a gateway's indexer, any CLI command, prune), so after a crash the
rows are in the store before anyone reads it through us.

The journal survives what SQLite's ``synchronous = NORMAL`` survives: a killed
process, not a power cut.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import json
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ._fs import open_regular
from ._rows import KIND_SQL

__all__ = [
    "HEADER", "SQL", "Journal", "JournalSegment", "is_journal_name", "journal_files", "same_file",
]

# A file stops taking rows at this size; it is deleted once its rows are committed.
# (A file whose rows are all committed is emptied at once; this bounds it under load.)
SEGMENT_BYTES = 1024 * 1024
# After a failed append (read-only or full disk, store directory gone), the next try
# waits this long: the rows meanwhile are queued in memory only (counted as
# ``unjournaled``).
_RETRY_AFTER_SECONDS = 1.0
# One encoder for every line (json.dumps with arguments builds a new one per call);
# rows are flat, so the check for circular references is skipped.
_ENCODER = json.JSONEncoder(separators=(",", ":"), check_circular=False)
# The kinds of row a journal holds, and the SQL that writes each.
SQL = KIND_SQL
# The first line of every journal file: with the exact name, what tells a file we
# made from a copy, a backup or anything else that happens to match a glob.
HEADER = b'["otel-delivery-journal",1]\n'
_TOKEN_HEX = 8
_NAME_TAIL = re.compile(rf"-journal-[0-9]{{1,10}}-[0-9a-f]{{{_TOKEN_HEX}}}")


def is_journal_name(store: str | os.PathLike[str], path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is named exactly as a journal of ``store`` is."""
    s, p = Path(store), Path(path)
    if p.parent != s.parent or not p.name.startswith(s.name):
        return False
    return _NAME_TAIL.fullmatch(p.name[len(s.name):]) is not None


def journal_files(store: str | os.PathLike[str]) -> list[Path]:
    """The files named as journals of the store at ``store`` (live or orphaned), that
    are regular files and not symlinks, oldest name first. Whether one really is a
    journal is told by its first line, when it is opened."""
    p = Path(store)
    found = []
    for name in glob.glob(f"{glob.escape(str(p))}-journal-*"):
        if not is_journal_name(p, name):
            continue
        try:
            if stat.S_ISREG(os.lstat(name).st_mode):
                found.append(Path(name))
        except OSError:
            continue
    return sorted(found)


class JournalSegment:
    """One journal file, and how many of its rows are not yet committed."""

    __slots__ = ("fd", "outstanding", "path", "size")

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.size = 0
        self.outstanding = 0


class Journal:
    """The journal files of one writer in one process. Thread-safe."""

    def __init__(self, store: str | os.PathLike[str], segment_bytes: int = SEGMENT_BYTES) -> None:
        self.store = Path(store)
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._current: JournalSegment | None = None
        self._closed: list[JournalSegment] = []  # full, with rows still to commit
        self._retry_at = 0.0

    def append(self, kind: str, row: Mapping[str, Any]) -> JournalSegment | None:
        """Write ``row`` to the journal; None if it could not be (the caller then writes
        it some other way). Pass the returned segment to :meth:`done` once committed."""
        if kind not in SQL:
            raise ValueError(f"the journal keeps no rows of kind {kind!r}")
        if time.monotonic() < self._retry_at:
            return None
        try:
            line = (_ENCODER.encode([kind, row]) + "\n").encode()
        except (TypeError, ValueError, RecursionError):
            return None  # a value JSON cannot hold; SQLite will say what is wrong with it
        with self._lock:
            seg = self._current
            try:
                if seg is None or seg.size >= self.segment_bytes:
                    seg = self._next_segment()
                written = os.write(seg.fd, line)
                if written != len(line):  # a full disk: the line is torn, stop using the file
                    raise OSError(errno.ENOSPC, "short write to the journal")
            except OSError:
                self._retry_at = time.monotonic() + _RETRY_AFTER_SECONDS
                if seg is not None and seg is self._current:
                    self._retire(seg)
                return None
            seg.size += len(line)
            seg.outstanding += 1
            return seg

    def done(self, segments: Iterable[JournalSegment]) -> None:
        """The rows appended to these segments are committed (or counted as lost).

        Called by the background thread after each commit; that is also when a file
        deleted from under the writer is noticed (the caller's append costs one
        ``write(2)`` and nothing else)."""
        with self._lock:
            for seg in segments:
                seg.outstanding -= 1
            finished = [s for s in self._closed if s.outstanding <= 0]
            if finished:
                self._closed = [s for s in self._closed if s.outstanding > 0]
            cur = self._current
            if cur is not None and _unlinked(cur.fd):
                # The file was deleted under us (the store's directory went, say): rows
                # still in it stay until committed, new ones go to a new file.
                self._retire(cur)
                cur = None
            if cur is not None and cur.outstanding <= 0 and cur.size > len(HEADER):
                # Everything in it is committed: start it over, so a crash now replays
                # nothing and an idle gateway keeps a file of one line.
                try:
                    os.ftruncate(cur.fd, len(HEADER))
                    cur.size = len(HEADER)
                except OSError:
                    self._retire(cur)
        for seg in finished:
            _delete(seg)

    def close(self, *, keep_rows: bool) -> None:
        """Let go of every file: delete them, or with ``keep_rows`` leave the ones still
        holding rows for the next writer to replay."""
        with self._lock:
            segments = self._closed + ([self._current] if self._current else [])
            self._closed, self._current = [], None
        for seg in segments:
            if keep_rows and seg.outstanding > 0:
                os.close(seg.fd)  # releases the lock: the file is now an orphan
            else:
                _delete(seg)

    def forget_after_fork(self) -> None:
        """In a forked child: close the inherited descriptors (the parent's lock and
        files stay the parent's)."""
        for seg in self._closed + ([self._current] if self._current else []):
            try:
                os.close(seg.fd)
            except OSError:
                pass
        self._closed, self._current = [], None

    def _next_segment(self) -> JournalSegment:
        if self._current is not None:
            self._retire(self._current)
        path = Path(f"{self.store}-journal-{os.getpid()}-{secrets.token_hex(_TOKEN_HEX // 2)}")
        fd = open_regular(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.write(fd, HEADER) != len(HEADER):
                raise OSError(errno.ENOSPC, "short write to the journal")
        except OSError:
            os.close(fd)
            try:
                os.unlink(path)
            except OSError:
                pass
            raise
        seg = self._current = JournalSegment(path, fd)
        seg.size = len(HEADER)
        return seg

    def _retire(self, seg: JournalSegment) -> None:
        """``seg`` takes no more rows; it goes when its last row is committed."""
        if seg is self._current:
            self._current = None
        if seg.outstanding > 0:
            self._closed.append(seg)
        else:
            _delete(seg)


def _unlinked(fd: int) -> bool:
    return os.fstat(fd).st_nlink == 0


def same_file(fd: int, path: Path) -> bool:
    """True when ``path`` still names the file open as ``fd`` (not a file put there
    since, which is not ours to delete)."""
    try:
        st, here = os.fstat(fd), os.lstat(path)
    except OSError:
        return False
    return st.st_nlink > 0 and (st.st_dev, st.st_ino) == (here.st_dev, here.st_ino)


def _delete(seg: JournalSegment) -> None:
    try:
        if same_file(seg.fd, seg.path):
            os.unlink(seg.path)
    except OSError:
        pass
    try:
        os.close(seg.fd)
    except OSError:
        pass
