"""A dead collector: exit stays quick without shutdown(), and memory stays bounded."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests import rawdb

CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    import otel_delivery
    from otel_delivery import arg

    def rss_mb():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    otel_delivery.configure(store=sys.argv[1], otlp_endpoint=sys.argv[2])

    @otel_delivery.deliver(channel="telegram", delivery_id=arg("n"))
    def send(n):
        return {"message_id": n}

    for n in range(2000):
        send(n)
    early = rss_mb()
    for n in range(2000, 12000):
        send(n)
    late = rss_mb()
    print(json.dumps({"early_mb": early, "late_mb": late}), flush=True)
    # No shutdown(): interpreter exit must flush the store and give up on the collector.
    """
)


def _refused_endpoint() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: every export is refused
    return f"http://127.0.0.1:{port}"


def test_exit_without_shutdown_is_quick_and_memory_is_bounded(tmp_path: Path) -> None:
    store = tmp_path / "d.db"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(store), _refused_endpoint()],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    printed = time.monotonic()
    child.wait(timeout=60)
    exit_seconds = time.monotonic() - printed
    assert child.returncode == 0, child.stderr.read() if child.stderr else ""
    figures = json.loads(line)
    # The SDK's export queue holds at most 2048 spans and ours is written as it goes,
    # so 10 000 more calls against a dead collector must not grow the process much.
    assert figures["late_mb"] - figures["early_mb"] < 25, figures
    assert exit_seconds < 2.0, exit_seconds  # the documented bound
    conn = rawdb.connect(store)
    delivered = conn.execute("SELECT COUNT(*) FROM attempts WHERE status = 'delivered'")
    assert delivered.fetchone() == (12000,)
    conn.close()
    print(f"\ndead collector: exit {exit_seconds:.2f} s after the last call, "
          f"RSS {figures['early_mb']:.0f} -> {figures['late_mb']:.0f} MB over 10k more calls")
