"""Crash mid-storm: a gateway SIGKILLed at random points loses no attempt.

A child process sends a stream of deliveries (some fail and are retried) and logs,
line by line, when each send body begins and when each decorated call has returned.
The parent kills it at a random moment, opens the store as any command would (which
commits the outcomes left in the dead child's journal), checks it against the log, then
runs the child again in resume mode and checks that the retries continue the attempt
numbers and join the original traces.

CI runs a few trials; ``OTEL_DELIVERY_STORM_TRIALS=100`` runs the long version.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from local_store import open_store
from local_store._journal import journal_files
from tests import rawdb

TRIALS = int(os.environ.get("OTEL_DELIVERY_STORM_TRIALS", "4"))

CHILD = textwrap.dedent(
    """
    import asyncio, json, random, sys, pathlib
    from opentelemetry import trace
    import otel_delivery
    from otel_delivery import arg

    store, workdir, mode, variant, seed = sys.argv[1:6]
    work = pathlib.Path(workdir)
    log = open(work / "events.log", "a", buffering=1)
    queue_file = work / "queue.jsonl"
    rng = random.Random(int(seed))
    otel_delivery.configure(service_name="storm", store=store)

    def attempt_number():
        return trace.get_current_span().attributes.get("otel_delivery.attempt")

    def body(entry):
        log.write(f"begin {entry['id']} {attempt_number()}\\n")
        if rng.random() < 0.3:
            raise TimeoutError("timed out")
        return {"message_id": entry["id"]}

    common = dict(channel="telegram", delivery_id=arg("entry.id"), max_attempts=5,
                  carrier=arg("entry.trace"))

    @otel_delivery.deliver(**common)
    def send(entry):
        return body(entry)

    @otel_delivery.deliver(**common)
    async def asend(entry):
        await asyncio.sleep(0)
        return body(entry)

    def one(entry):
        n = None
        try:
            if variant == "async":
                asyncio.run(asend(entry))
            else:
                send(entry)
            status = "delivered"
        except TimeoutError:
            status = "failed"
        log.write(f"end {entry['id']} {status}\\n")
        return status

    @otel_delivery.ai_run(agent="storm")
    def produce(i):
        entry = {"id": f"d{i}", "trace": otel_delivery.carry()}
        with open(queue_file, "a", buffering=1) as q:
            q.write(json.dumps(entry) + "\\n")
        return entry

    if mode == "storm":
        (work / "ready").write_text("ready")
        i = 0
        while True:  # until killed
            entry = produce(i)
            for _ in range(3):
                if one(entry) == "delivered":
                    break
            i += 1
    else:  # resume: one more attempt for every delivery not delivered yet
        delivered = {l.split()[1] for l in open(work / "events.log")
                     if l.startswith("end ") and l.split()[2] == "delivered"}
        rng = random.Random(0)
        rng.random = lambda: 1.0  # the retries succeed
        for line in open(queue_file):
            entry = json.loads(line)
            if entry["id"] not in delivered:
                one(entry)
    """
)


def _run_child(
    store: Path, work: Path, mode: str, variant: str, seed: int
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(store), str(work), mode, variant, str(seed)],
        stderr=subprocess.PIPE,
    )


def _events(work: Path) -> tuple[dict[tuple[str, int], int], dict[str, list[str]]]:
    begun: dict[tuple[str, int], int] = {}
    ended: dict[str, list[str]] = {}
    for line in (work / "events.log").read_text().splitlines():
        parts = line.split()
        if len(parts) != 3:
            continue  # the line the kill cut short
        if parts[0] == "begin" and parts[2] != "None":
            begun[(parts[1], int(parts[2]))] = begun.get((parts[1], int(parts[2])), 0) + 1
        elif parts[0] == "end":
            ended.setdefault(parts[1], []).append(parts[2])
    return begun, ended


def _rows(store: Path) -> list[tuple[str, int, str, str]]:
    conn = rawdb.connect(store)
    try:
        return [
            (r[0], int(r[1]), str(r[2]), str(r[3]))
            for r in conn.execute(
                "SELECT delivery_id, attempt, status, trace_id FROM attempts ORDER BY id"
            )
        ]
    finally:
        conn.close()


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@pytest.mark.parametrize("variant", ["sync", "async"])
def test_sigkill_at_random_points_loses_no_attempt(tmp_path: Path, variant: str) -> None:
    rng = random.Random(20261129)
    totals = {"trials": 0, "attempts_checked": 0, "interrupted": 0, "resumed": 0,
              "journal_rows": 0}
    for trial in range(TRIALS):
        work = tmp_path / f"{variant}-{trial}"
        work.mkdir()
        store = work / "d.db"
        proc = _run_child(store, work, "storm", variant, trial)
        deadline = time.monotonic() + 60
        while not (work / "ready").exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "child never became ready"
            time.sleep(0.005)
        time.sleep(rng.uniform(0.02, 0.4))  # a random point in the storm
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL

        begun, ended = _events(work)
        # Outcomes the child had not committed yet are in its journal; any writable open
        # (a restart, a CLI command) commits them first.
        journals = journal_files(store)
        totals["journal_rows"] += sum(len(p.read_bytes().splitlines()) for p in journals)
        open_store(store).conn.close()
        assert journal_files(store) == []
        rows = _rows(store)
        keys = [(d, a) for d, a, _, _ in rows]
        assert len(keys) == len(set(keys)), "an attempt was recorded twice"
        by_key = {(d, a): status for d, a, status, _ in rows}
        # Every send whose body began has its attempt row (committed before the body).
        missing = set(begun) - set(by_key)
        assert not missing, f"sends with no attempt row: {sorted(missing)[:5]}"
        # Every finished call kept its outcome, in order of attempts.
        for delivery, outcomes in ended.items():
            recorded = [by_key[(delivery, n)] for n in range(1, len(outcomes) + 1)]
            assert recorded == outcomes, (delivery, recorded, outcomes)
        # The rest started and never ended: at most one, the one the kill cut short.
        unfinished = [k for k, s in by_key.items() if s in ("started", "interrupted")]
        assert len(unfinished) <= 1, unfinished
        totals["attempts_checked"] += len(rows)
        totals["interrupted"] += len(unfinished)

        # Restart: the retries continue the numbering and join their traces.
        resume = _run_child(store, work, "resume", variant, trial)
        _, err = resume.communicate(timeout=60)
        assert resume.returncode == 0, err.decode()
        after = _rows(store)
        queued = [json.loads(line) for line in (work / "queue.jsonl").read_text().splitlines()]
        traces = {e["id"]: e["trace"]["traceparent"].split("-")[1] for e in queued}
        for delivery, attempt, status, trace_id in after[len(rows):]:
            earlier = [a for d, a, _, _ in rows if d == delivery]
            assert attempt == 1 + max(earlier, default=0), delivery
            assert trace_id == traces[delivery], "a retry left its original trace"
            assert status == "delivered"
            totals["resumed"] += 1
        final = {(d, a): s for d, a, s, _ in after}
        for key in unfinished:
            assert final[key] == "interrupted", "a crashed attempt was not marked interrupted"
        totals["trials"] += 1
    print(f"\nstorm {variant}: {json.dumps(totals)}")
