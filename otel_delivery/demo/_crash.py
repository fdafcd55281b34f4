"""The crash: a sender process killed with SIGKILL in the middle of a send.

The demo cannot kill itself and still print its report, so the process that dies
is a child (``_crash_child``). It configures ``otel_delivery`` on the same store,
loads the entry from the persisted queue file and starts the same decorated send;
the parent kills it once the send is under way. The attempt row written to the
child's journal before the send is all that is left of it (committed by the next
writable open of the store, as a restarted gateway's), and the entry stays in the
queue file for the restarted queue.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import otel_delivery

from .exceptions import DemoError

__all__ = ["COMMITTED", "CrashError", "kill_mid_send"]

#: What the child writes to its marker once its attempt row is on disk (in the store,
#: or in its journal).
COMMITTED = "committed"


class CrashError(DemoError):
    """The child never reached the send, so there was nothing to kill mid-send."""


def kill_mid_send(
    store: Path,
    queue_file: Path,
    delivery_id: str,
    workdir: Path,
    *,
    timeout_seconds: float = 60.0,
) -> bool:
    """Start the child, SIGKILL it mid-send, reap it; True if its attempt row was on disk.

    Raises CrashError when the child exits or stalls before it reaches the send.
    """
    marker = workdir / "crash-marker"
    stderr_path = workdir / "crash-stderr.txt"
    package_root = str(Path(otel_delivery.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env["OTEL_TRACES_EXPORTER"] = "none"  # its spans die with it; only the store matters
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    env.pop("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", None)
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "otel_delivery.demo._crash_child",
             str(store), str(queue_file), delivery_id, str(marker)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, env=env,
        )
    try:
        deadline = time.monotonic() + timeout_seconds
        while not marker.exists():
            if proc.poll() is not None:
                detail = stderr_path.read_text(errors="replace").strip().splitlines()
                raise CrashError(
                    f"the crash child exited with {proc.returncode} before sending: "
                    f"{detail[-1] if detail else 'no output'}"
                )
            if time.monotonic() > deadline:
                raise CrashError(f"the crash child did not reach the send in {timeout_seconds} s")
            time.sleep(0.005)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        # Reaped, so its pid is gone and the store can tell its writer is dead.
        proc.wait()
    return marker.read_text(encoding="utf-8") == COMMITTED


