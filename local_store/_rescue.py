"""Finding attempts that started and never ended because their process died.

An attempt row is committed with status ``started`` before the send runs. If the
process is killed mid-send, the row stays ``started``. It is *interrupted* when the
process that wrote it is known to be gone: its writer closed, or its pid no longer
runs on this host, or the row is older than ``stale_after_ms``.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time

__all__ = ["dead_writer_ids", "rescue_interrupted"]

DEFAULT_STALE_AFTER_MS = 60 * 60 * 1000


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    except OSError:
        return False
    return True


def dead_writer_ids(conn: sqlite3.Connection) -> list[int]:
    """Writers that can no longer finish an attempt: closed, or dead on this host."""
    host = socket.gethostname()
    dead: list[int] = []
    for writer_id, pid, whost, ended in conn.execute(
        "SELECT id, pid, host, ended_at_ms FROM writers WHERE id IN "
        "(SELECT DISTINCT writer_id FROM attempts WHERE status = 'started')"
    ):
        if ended is not None or (whost == host and not _pid_alive(pid)):
            dead.append(int(writer_id))
    return dead


def rescue_interrupted(
    conn: sqlite3.Connection, stale_after_ms: int = DEFAULT_STALE_AFTER_MS
) -> int:
    """Mark the ``started`` attempts of dead writers as ``interrupted``; return how many.

    This rewrites only the status of rows whose writer can never finish them; attempt
    numbers and retry counts are untouched.
    """
    now = time.time_ns() // 1_000_000
    dead = dead_writer_ids(conn)
    placeholders = ", ".join("?" * len(dead)) or "NULL"
    cur = conn.execute(
        "UPDATE attempts SET status = 'interrupted' WHERE status = 'started' AND "
        f"(writer_id IN ({placeholders}) OR started_at_ms < ?)",
        (*dead, now - stale_after_ms),
    )
    conn.execute(
        f"UPDATE writers SET ended_at_ms = ? WHERE ended_at_ms IS NULL AND id IN ({placeholders})",
        (now, *dead),
    )
    conn.commit()
    return cur.rowcount
