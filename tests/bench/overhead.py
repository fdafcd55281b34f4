"""Measures 1 and 2: what a decorated call costs the gateway.

#1 ``inbound`` and ``ai_run``, sync and async, mirror on (store processor plus a
BatchSpanProcessor with a discarding exporter, as a gateway exporting OTLP has),
against (a) the undecorated function and (b) the hand-written plain decorator of
``plain.py`` on its own provider with a BatchSpanProcessor and a discarding exporter.

#2 ``deliver``, whose start row is written before the send (appended to the process's
journal; the background thread commits it), against (b) plus one raw single-row
commit into a store-shaped SQLite file (WAL, same pragmas), made in the same place
(after the span starts, before the send).

Each sample is ``calls`` calls on fresh messages; the pipelines are flushed after
each sample, outside the timed part, so every sample starts from the same state. The
flush is timed too, and reported beside #2: the calls plus the flush is the whole
work, including the commits the background thread had not made by the last call.
"""

from __future__ import annotations

import asyncio
import cProfile
import itertools
import pstats
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, TraceFlags

import otel_delivery
from local_store import open_store
from local_store._schema import connect
from otel_delivery import _attributes as A
from otel_delivery import arg

from .plain import plain_ai_run, plain_deliver, plain_inbound
from .timing import Result, alternate, ratio_stats

__all__ = ["DiscardExporter", "run_overhead"]

CHANNEL = "telegram"
AGENT = "support-bot"
MAX_ATTEMPTS = 3
RESOURCE = Resource.create({"service.name": "bench-gateway"})


class DiscardExporter(SpanExporter):
    """Accepts every batch and keeps nothing: export cost without a network."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


@dataclass
class Msg:
    """An inbound message or a reply: an id, a chat, and the metadata dict (carrier)."""

    id: str
    chat_id: int
    meta: dict[str, str] = field(default_factory=dict)


class RawCommit:
    """One attempts-shaped row committed on its own, with the store's pragmas."""

    def __init__(self, path: Path) -> None:
        open_store(path, create=True).close()
        self.conn = connect(path)
        self._ids = itertools.count(1)

    def __call__(self) -> None:
        n = next(self._ids)
        self.conn.execute(
            "INSERT INTO attempts (delivery_id, attempt, max_attempts, trace_id, span_id, "
            "channel, recipient, status, started_at_ms, service) "
            "VALUES (?, 1, 3, ?, ?, 'telegram', '4242', 'started', ?, 'bench-gateway')",
            (f"d-{n}", f"{n:032x}", f"{n:016x}", time.time_ns() // 1_000_000),
        )
        self.conn.commit()

    def close(self) -> None:
        self.conn.close()


def _parent_meta() -> dict[str, str]:
    """A carrier as the inbound step leaves it: a valid parent and the correlation keys."""
    ctx = trace.set_span_in_context(trace.NonRecordingSpan(SpanContext(
        trace_id=0x5B8AA5A2D2C872E8321CF37308D69DF2, span_id=0x051581BF3BB55C45,
        is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )))
    meta: dict[str, str] = {}
    propagate.inject(meta, context=ctx)
    meta[A.CARRIER_INBOUND_ID] = "tg-1"
    meta[A.CARRIER_CHANNEL] = CHANNEL
    return meta


@dataclass
class Functions:
    """The three versions of each step: ours, the plain decorator, and undecorated."""

    steps: dict[str, dict[str, Callable[[Msg], Any]]]
    inputs: dict[str, Callable[[], Msg]]


def _bodies() -> dict[str, tuple[Callable[[Msg], Any], Callable[[Msg], Any]]]:
    def inbound_body(msg: Msg) -> None:
        return None

    async def inbound_async(msg: Msg) -> None:
        return None

    def run_body(msg: Msg) -> str:
        return "the reply"

    async def run_async(msg: Msg) -> str:
        return "the reply"

    def send_body(reply: Msg) -> dict[str, str]:
        return {"message_id": "4711"}

    async def send_async(reply: Msg) -> dict[str, str]:
        return {"message_id": "4711"}

    return {
        "inbound": (inbound_body, inbound_async),
        "ai_run": (run_body, run_async),
        "deliver": (send_body, send_async),
    }


def build_functions(plain_tracer: trace.Tracer, raw: RawCommit | None) -> Functions:
    ids = itertools.count(1)
    parent = _parent_meta()
    inputs = {
        "inbound": lambda: Msg(f"tg-{next(ids)}", 4242),
        "ai_run": lambda: Msg(f"tg-{next(ids)}", 4242, dict(parent)),
        "deliver": lambda: Msg(f"dlv-{next(ids):012d}", 4242, dict(parent)),
    }
    ours_deco = {
        "inbound": otel_delivery.inbound(
            channel=CHANNEL, inbound_id=arg("msg.id"), carrier=arg("msg.meta")
        ),
        "ai_run": otel_delivery.ai_run(agent=AGENT, carrier=arg("msg.meta")),
        "deliver": otel_delivery.deliver(
            channel=CHANNEL, recipient=arg("reply.chat_id"), delivery_id=arg("reply.id"),
            max_attempts=MAX_ATTEMPTS, carrier=arg("reply.meta"),
        ),
    }
    plain_deco = {
        "inbound": plain_inbound(plain_tracer, CHANNEL),
        "ai_run": plain_ai_run(plain_tracer, AGENT),
        "deliver": plain_deliver(plain_tracer, CHANNEL, MAX_ATTEMPTS),
    }
    steps: dict[str, dict[str, Callable[[Msg], Any]]] = {}
    for kind, (sync_body, async_body) in _bodies().items():
        for mode, body in (("sync", sync_body), ("async", async_body)):
            versions = {
                "ours": ours_deco[kind](body),
                "plain": plain_deco[kind](body),
                "bare": body,
            }
            if kind == "deliver" and raw is not None:
                versions["plain+commit"] = plain_deliver(
                    plain_tracer, CHANNEL, MAX_ATTEMPTS, before=raw
                )(body)
            steps[f"{kind}/{mode}"] = versions
    return Functions(steps, inputs)


def check_parity(workdir: Path) -> dict[str, Any]:
    """Ours and the plain decorator give spans of the same name, kind and attributes.

    Returns, per step, the attribute keys only one side sets (both lists should be
    empty apart from what ours adds by design, which the report shows).
    """
    ours_mem, plain_mem = InMemorySpanExporter(), InMemorySpanExporter()
    ours_provider = TracerProvider(resource=RESOURCE)
    ours_provider.add_span_processor(SimpleSpanProcessor(ours_mem))
    plain_provider = TracerProvider(resource=RESOURCE)
    plain_provider.add_span_processor(SimpleSpanProcessor(plain_mem))
    handle = otel_delivery.configure(
        store=workdir / "parity.db", tracer_provider=ours_provider
    )
    try:
        fns = build_functions(plain_provider.get_tracer("bench-plain"), None)
        for kind in ("inbound", "ai_run", "deliver"):
            versions = fns.steps[f"{kind}/sync"]
            versions["ours"](fns.inputs[kind]())
            versions["plain"](fns.inputs[kind]())
        assert handle.force_flush()
    finally:
        handle.shutdown()
    out: dict[str, Any] = {}
    for ours, plain in zip(
        ours_mem.get_finished_spans(), plain_mem.get_finished_spans(), strict=True
    ):
        kind = (ours.attributes or {}).get(A.KIND)
        ok, pk = set(ours.attributes or {}), set(plain.attributes or {})
        out[str(kind)] = {
            "same_name": ours.name == plain.name,
            "same_kind": ours.kind == plain.kind,
            "only_ours": sorted(ok - pk),
            "only_plain": sorted(pk - ok),
        }
    return out


def _sync_sample(
    fn: Callable[[Msg], Any], make: Callable[[], Msg], calls: int, flush: Callable[[], Any],
    flushed: list[float],
) -> Callable[[], float]:
    """Per-call seconds of ``calls`` calls; the per-call seconds of the calls plus the
    flush after them go to ``flushed``."""
    def sample() -> float:
        inputs = [make() for _ in range(calls)]
        t0 = time.perf_counter()
        for m in inputs:
            fn(m)
        elapsed = time.perf_counter() - t0
        flush()
        flushed.append((time.perf_counter() - t0) / calls)
        return elapsed / calls

    return sample


def _async_sample(
    loop: asyncio.AbstractEventLoop,
    fn: Callable[[Msg], Any],
    make: Callable[[], Msg],
    calls: int,
    flush: Callable[[], Any],
    flushed: list[float],
) -> Callable[[], float]:
    async def batch(inputs: list[Msg]) -> float:
        t0 = time.perf_counter()
        for m in inputs:
            await fn(m)
        return time.perf_counter() - t0

    def sample() -> float:
        inputs = [make() for _ in range(calls)]
        t0 = time.perf_counter()
        elapsed = loop.run_until_complete(batch(inputs))
        flush()
        flushed.append((time.perf_counter() - t0) / calls)
        return elapsed / calls

    return sample


def _profile(fn: Callable[[Msg], Any], make: Callable[[], Msg], calls: int, out: Path) -> list[
    dict[str, Any]
]:
    """cProfile ``calls`` calls; write the text report, return the top functions."""
    inputs = [make() for _ in range(calls)]
    prof = cProfile.Profile()
    prof.enable()
    for m in inputs:
        fn(m)
    prof.disable()
    return write_profile(prof, out)


def write_profile(prof: cProfile.Profile, out: Path, top: int = 25) -> list[dict[str, Any]]:
    buf = StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    out.write_text(buf.getvalue())
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values()) or 1.0
    rows = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:10]
    return [
        {"function": f"{Path(f).name}:{line}({name})", "calls": v[1],
         "tottime_share": round(v[2] / total, 3)}
        for (f, line, name), v in rows
    ]


def run_overhead(
    *, calls: int, rounds: int, warmup: int, workdir: Path, profile_dir: Path | None
) -> tuple[list[Result], dict[str, Any]]:
    parity = check_parity(workdir)
    raw = RawCommit(workdir / "raw-commit.db")
    ours_provider = TracerProvider(resource=RESOURCE)
    handle = otel_delivery.configure(
        store=workdir / "overhead.db", tracer_provider=ours_provider,
        span_exporter=DiscardExporter(),
    )
    plain_provider = TracerProvider(resource=RESOURCE)
    plain_provider.add_span_processor(BatchSpanProcessor(DiscardExporter()))
    fns = build_functions(plain_provider.get_tracer("bench-plain"), raw)
    flushes: dict[str, Callable[[], Any]] = {
        "ours": handle.force_flush, "plain": plain_provider.force_flush,
        "plain+commit": plain_provider.force_flush, "bare": lambda: None,
    }
    loop = asyncio.new_event_loop()
    results: list[Result] = []
    extra: dict[str, Any] = {"parity": parity}
    try:
        for step in ("inbound/sync", "inbound/async", "ai_run/sync", "ai_run/async",
                     "deliver/sync", "deliver/async"):
            kind, mode = step.split("/")
            versions = fns.steps[step]
            make = fns.inputs[kind]
            flushed: dict[str, list[float]] = {name: [] for name in versions}
            variants = {
                name: (
                    _sync_sample(fn, make, calls, flushes[name], flushed[name]) if mode == "sync"
                    else _async_sample(loop, fn, make, calls, flushes[name], flushed[name])
                )
                for name, fn in versions.items()
            }
            r = alternate(variants, rounds=rounds, warmup=warmup)
            us = {name: r.median(name) * 1e6 for name in versions}
            # Calls plus the flush after them (warm-up samples left out).
            with_flush = {name: statistics.median(v[-rounds:]) * 1e6 for name, v in flushed.items()}
            info = {f"{name}_us": round(v, 2) for name, v in us.items()}
            info.update({f"{name}_with_flush_us": round(v, 2) for name, v in with_flush.items()})
            info["ours_minus_bare_us"] = round(us["ours"] - us["bare"], 2)
            info["plain_minus_bare_us"] = round(us["plain"] - us["bare"], 2)
            if kind == "deliver":
                med, spread = ratio_stats(r.ratios("ours", "plain+commit"))
                results.append(Result(
                    id=f"2-{kind}-{mode}", measure=f"#2 deliver per call ({mode})",
                    a_label="ours (start row journaled before the send)",
                    b_label="(b) plain decorator + 1 raw WAL commit",
                    a=us["ours"], b=us["plain+commit"], unit="µs/call", ratio=med,
                    spread=spread, target="≤ 1.5×", met=med <= 1.5,
                    note=(f"undecorated {us['bare']:.1f} µs; plain alone {us['plain']:.1f} µs; "
                          f"with the flush after the calls (the background commits): ours "
                          f"{with_flush['ours']:.1f} µs vs {with_flush['plain+commit']:.1f} µs "
                          f"({with_flush['ours'] / with_flush['plain+commit']:.2f}×)"),
                    extra=info,
                ))
            else:
                med, spread = ratio_stats(r.ratios("ours", "plain"))
                results.append(Result(
                    id=f"1-{kind}-{mode}", measure=f"#1 {kind} per call ({mode}, mirror on)",
                    a_label="ours", b_label="(b) plain OTel decorator + BSP(discard)",
                    a=us["ours"], b=us["plain"], unit="µs/call", ratio=med, spread=spread,
                    target="≤ 1.15×", met=med <= 1.15,
                    note=f"(a) undecorated {us['bare']:.2f} µs", extra=info,
                ))
        assert handle.force_flush()
        extra["ours_stats"] = handle.stats()
        if profile_dir is not None:
            profiles: dict[str, Any] = {}
            for step in ("inbound/sync", "ai_run/sync", "deliver/sync"):
                kind = step.split("/")[0]
                profiles[kind] = _profile(
                    fns.steps[step]["ours"], fns.inputs[kind], calls,
                    profile_dir / f"profile-{kind}.txt",
                )
                assert handle.force_flush()
            extra["profiles"] = profiles
    finally:
        loop.close()
        handle.shutdown()
        plain_provider.shutdown()
        raw.close()
    return results, extra
