"""The benchmark harness: ``python -m tests.bench [--size tiny|small|full] [--out FILE]``.

Runs measures 1-7 of issue 4, 8 of issue 15 (classify time by error size) and 9 of
issue 17 (a receipt against an inbound span), prints
one table (measure, A, B, median ratio, spread, target, met/missed), and writes the
results as JSON (and the table as Markdown next to it). ``--size small`` takes under
two minutes; ``--size full`` builds 1M- and 10M-attempt stores (cached in ``--work``,
reused by later runs) and takes much longer; ``--size tiny`` is the smoke test's.
Profiles of the hot paths go to ``--profile-dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from local_store import SCHEMA_VERSION, StoreUpgradeNeededError, StoreVersionError, open_store
from local_store._schema import schema_version

from .timing import Result
from .traffic import BulkWriter, messages, messages_for_attempts

__all__ = ["SIZES", "Size", "main", "run"]

MEASURES = ("1", "2", "3", "4", "5", "6", "7", "8", "9")


@dataclass(frozen=True)
class Size:
    name: str
    calls: int  # per sample, measures 1 and 2
    rounds: int
    warmup: int
    ingest_messages: int  # per sample, measure 3
    ingest_rounds: int
    query_attempts: tuple[int, ...]  # store sizes for measure 4; the last one also for 5-7
    query_rounds: int
    folder_files: int
    rss_spans: int
    quiet_seconds: float  # writer's no-prune windows, measure 5


SIZES = {
    "tiny": Size("tiny", 100, 3, 1, 50, 3, (3_000,), 3, 300, 2_000, 0.5),
    "small": Size("small", 1_000, 7, 1, 400, 5, (100_000,), 5, 10_000, 20_000, 2.0),
    "full": Size("full", 5_000, 21, 3, 4_000, 11, (1_000_000, 10_000_000), 7, 10_000,
                 1_000_000, 10.0),
}
TARGET_ATTEMPTS = 10_000_000


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build_store(
    work: Path, attempts: int, *, seed: int = 4
) -> tuple[Path, int, dict[str, Any]]:
    """A store of about ``attempts`` attempts over 30 days (cached in ``work``).

    Returns (path, the "now" its traffic ends at, info: row counts, build seconds, and
    whether it came from the cache).
    """
    path = work / f"store-{attempts}-seed{seed}.db"
    marker = path.with_suffix(".json")
    if marker.exists() and path.exists():
        info = json.loads(marker.read_text())
        # A store cached by an older schema is built again: an upgrade leaves the old
        # rows' layout in the file, and the sizes measured must be a new store's.
        try:
            current = _schema_of(path) >= SCHEMA_VERSION
            why = "has an older schema"
        except (StoreVersionError, StoreUpgradeNeededError) as exc:
            current, why = False, f"cannot be used ({exc})"
        if current:
            return path, int(info["end_ms"]), {**info, "cached": True}
        log(f"  cached {path.name} {why}: building it again")
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    end_ms = time.time_ns() // 1_000_000
    t0 = time.monotonic()
    with BulkWriter(path) as bulk:
        counts = bulk.write(messages(messages_for_attempts(attempts), end_ms=end_ms, seed=seed))
    seconds = time.monotonic() - t0
    info = {"end_ms": end_ms, "counts": counts, "seconds": round(seconds, 1),
            "bytes": path.stat().st_size, "schema_version": SCHEMA_VERSION}
    marker.write_text(json.dumps(info))
    return path, end_ms, {**info, "cached": False}


def _schema_of(path: Path) -> int:
    """The schema version of a cached store."""
    db = open_store(path, readonly=True)
    try:
        return schema_version(db)
    finally:
        db.close()


def _copy_store(src: Path, dst: Path) -> Path:
    for suffix in ("", "-wal", "-shm"):
        Path(str(dst) + suffix).unlink(missing_ok=True)
    shutil.copyfile(src, dst)
    os.chmod(dst, 0o600)
    return dst


def machine() -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import sqlite3

    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
            cwd=Path(__file__).resolve().parent, timeout=10,
        ).stdout.strip()
    except Exception:
        commit = "?"
    return {
        "nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version, "platform": platform.platform(),
        "loadavg_at_start": os.getloadavg(), "commit": commit,
    }


def run(
    size: Size,
    *,
    work: Path,
    profile_dir: Path | None,
    only: tuple[str, ...] = MEASURES,
) -> dict[str, Any]:
    """Run the measures in ``only``; return the results document."""
    work.mkdir(parents=True, exist_ok=True)
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "size": size.name, "machine": machine(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "results": [], "extra": {}, "timings_seconds": {},
    }
    results: list[Result] = doc["results"]

    def step(name: str, fn: Callable[[], tuple[list[Result], dict[str, Any]]]) -> None:
        log(f"{name} ...")
        t0 = time.monotonic()
        res, extra = fn()
        doc["timings_seconds"][name] = round(time.monotonic() - t0, 1)
        results.extend(res)
        doc["extra"][name] = extra
        for r in res:
            log(f"  {format_row(r)}")

    if "1" in only or "2" in only:
        from .overhead import run_overhead

        def overhead() -> tuple[list[Result], dict[str, Any]]:
            res, extra = run_overhead(
                calls=size.calls, rounds=size.rounds, warmup=size.warmup,
                workdir=_fresh(work / "overhead"), profile_dir=profile_dir,
            )
            return [r for r in res if r.id[0] in only], extra

        step("overhead (#1, #2)", overhead)
    if "9" in only:
        from .receipts import run_receipts

        step("receipts (#9)", lambda: run_receipts(
            calls=size.calls, rounds=size.rounds, warmup=size.warmup,
            workdir=_fresh(work / "receipts"),
        ))
    if "3" in only:
        from .ingest import run_ingest

        step("ingest (#3)", lambda: run_ingest(
            messages_per_sample=size.ingest_messages, rounds=size.ingest_rounds,
            warmup=1, workdir=_fresh(work / "ingest"),
        ))
    stores: dict[int, tuple[Path, int]] = {}
    if any(m in only for m in "4567"):
        for n in size.query_attempts:
            log(f"building a store of {n:,} attempts (bulk path; cached in {work}) ...")
            path, end_ms, info = build_store(work, n)
            stores[n] = (path, end_ms)
            doc["extra"][f"store {n}"] = info
            doc["timings_seconds"][f"build store {n}"] = 0.0 if info["cached"] else info["seconds"]
            log(f"  {path.stat().st_size / 1e6:,.0f} MB, built in {info['seconds']:.0f} s"
                + (" (cached from an earlier run)" if info["cached"] else ""))
    if "4" in only:
        from .queries import build_failed_folder, run_queries

        folder = work / f"failed-{size.folder_files}"
        if not folder.exists() or len(os.listdir(folder)) != size.folder_files:
            shutil.rmtree(folder, ignore_errors=True)
            build_failed_folder(folder, size.folder_files, end_ms=time.time_ns() // 1_000_000)
        for n, (path, end_ms) in stores.items():
            # Scan "this week" relative to the folder's own clock (built just now or cached).
            step(f"queries (#4) at {n:,}", lambda path=path, end_ms=end_ms, n=n: run_queries(
                store=path, attempts=n, now_ms=end_ms + 60_000, folder=folder,
                folder_files=size.folder_files, rounds=size.query_rounds, warmup=1,
                target_size=TARGET_ATTEMPTS, profile_dir=profile_dir,
            ))
    if stores and any(m in only for m in "567"):
        n = max(stores)
        end_ms = stores[n][1]
        log("copying the stores for #5-#7 (they write to them) ...")
        copies = {
            m: _copy_store(path, work / f"scratch-{m}.db")
            for m, (path, _) in stores.items() if m == n or "6" in only
        }
        copy = copies[n]
        if "6" in only:
            from .memory import run_memory

            step("memory (#6)", lambda: run_memory(
                spans=size.rss_spans, big_stores=copies, workdir=_fresh(work / "memory"),
            ))
        if "5" in only or "7" in only:
            from .pruning import run_prune

            def prune_step() -> tuple[list[Result], dict[str, Any]]:
                res, extra = run_prune(
                    store=copy, now_ms=end_ms, quiet_seconds=size.quiet_seconds,
                    workdir=_fresh(work / "prune"),
                )
                return [r for r in res if r.id[0] in only], extra

            step("prune (#5) and size (#7)", prune_step)
    if "8" in only:
        from .classify import run_classify

        step("classify (#8)", lambda: run_classify(rounds=size.rounds, warmup=size.warmup))
    doc["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    doc["results"] = [r.to_dict() for r in results]
    return doc


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


# -- the table -------------------------------------------------------------------------


def _num(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "per s":
        return f"{value:,.0f}/s"
    if unit == "ms":
        return f"{value:,.2f} ms" if value < 10 else f"{value:,.1f} ms"
    if unit == "MB":
        return f"{value:,.0f} MB"
    if unit == "share":
        return f"{value:.1%}"
    if unit == "B":
        return f"{value:,.0f} B"
    return f"{value:,.1f} {unit}"


def _met(met: bool | None) -> str:
    return {True: "met", False: "MISSED", None: "n/a"}[met]


def _cells(r: Result | dict[str, Any]) -> list[str]:
    d = r.to_dict() if isinstance(r, Result) else r
    spread = d["spread"]
    return [
        d["measure"],
        _num(d["a"], d["unit"]),
        _num(d["b"], d["unit"]),
        "-" if d["ratio"] is None else f"{d['ratio']:.2f}×",
        "-" if not spread else f"{spread[0]:.2f}–{spread[1]:.2f}",
        d["target"],
        _met(d["met"]),
    ]


HEADER = ["measure", "A", "B", "ratio (median)", "spread (q1–q3)", "target", "met?"]


def format_row(r: Result) -> str:
    return " | ".join(_cells(r))


def text_table(rows: list[dict[str, Any]]) -> str:
    table = [HEADER] + [_cells(r) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADER))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
             for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def notes(rows: list[dict[str, Any]]) -> str:
    return "\n".join(f"- {r['measure']}: {r['a_label']} vs {r['b_label']}. {r['note']}"
                     for r in rows if r.get("note"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--out", type=Path, help="JSON results (default bench-results-SIZE.json)")
    p.add_argument("--work", type=Path,
                   help="scratch directory; stores built here are reused by later runs "
                   "(default: a temporary directory, removed at the end)")
    p.add_argument("--profile-dir", type=Path,
                   help="write profiles of the hot paths here (default bench-profile-SIZE)")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--only", default=",".join(MEASURES),
                   help="comma-separated measure numbers, e.g. 1,2 (default: all)")
    args = p.parse_args(argv)
    size = SIZES[args.size]
    only = tuple(m.strip() for m in args.only.split(",") if m.strip())
    unknown = set(only) - set(MEASURES)
    if unknown:
        p.error(f"--only: unknown measures {sorted(unknown)}; choose from 1-8")
    out = args.out or Path(f"bench-results-{size.name}.json")
    profile_dir = None if args.no_profile else (
        args.profile_dir or Path(f"bench-profile-{size.name}")
    )
    t0 = time.monotonic()
    if args.work is None:
        with tempfile.TemporaryDirectory(prefix="otel-delivery-bench-") as tmp:
            doc = run(size, work=Path(tmp), profile_dir=profile_dir, only=only)
    else:
        doc = run(size, work=args.work, profile_dir=profile_dir, only=only)
    doc["total_seconds"] = round(time.monotonic() - t0, 1)
    out.write_text(json.dumps(doc, indent=2, default=str))
    out.with_suffix(".md").write_text(
        markdown_table(doc["results"]) + "\n\n" + notes(doc["results"]) + "\n"
    )
    print(text_table(doc["results"]))
    print(f"\n{len(doc['results'])} results in {doc['total_seconds']:.0f} s; "
          f"JSON: {out}, Markdown: {out.with_suffix('.md')}"
          + (f", profiles: {profile_dir}/" if profile_dir else ""))
    return 0
