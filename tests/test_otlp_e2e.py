"""The fleet path end to end: real OTLP exporters, a real collector hop, a dead collector.

Spans travel over 127.0.0.1 to a receiver that decodes OTLP with opentelemetry-proto
(tests/otlp_receiver.py); every assertion is on what crossed the wire, checked against
the local store the same run wrote.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

import otel_delivery
from otel_delivery import _attributes as A
from otel_delivery import arg
from otel_delivery.demo import run_demo
from tests import rawdb

from .otlp_receiver import DecodedSpan, OtlpReceiver, free_port, otlp_receiver

CONFIG_DIR = Path(__file__).resolve().parent.parent / "collector-config"
DEMO_SERVICE = "demo-gateway"
PROTOCOLS = ["http/protobuf", "grpc"]

# Every attribute name the package defines: what a span may carry.
DOCUMENTED = {
    value for name, value in vars(A).items()
    if name.isupper() and isinstance(value, str) and "." in value
}


def _endpoint(rx: OtlpReceiver, protocol: str) -> str:
    return rx.grpc_endpoint if protocol == "grpc" else rx.http_endpoint


def _rows(store: Path, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    conn = rawdb.connect(store)
    conn.row_factory = rawdb.Row
    try:
        return [dict(r) for r in conn.execute(sql, params)]
    finally:
        conn.close()


def _by_trace(spans: list[DecodedSpan]) -> dict[str, list[DecodedSpan]]:
    traces: dict[str, list[DecodedSpan]] = defaultdict(list)
    for s in spans:
        traces[s.trace_id].append(s)
    return dict(traces)


# -- the demo gateway, over both OTLP transports ---------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_demo_gateways_traces_arrive_whole(
    protocol: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    store = tmp_path / "deliveries.db"
    with otlp_receiver() as rx:
        provider = TracerProvider(resource=Resource.create({"service.name": DEMO_SERVICE}))
        result = run_demo(store=store, messages=12, out=io.StringIO(),
                          otlp_endpoint=_endpoint(rx, protocol), tracer_provider=provider)
        finished = _rows(store, "SELECT span_id FROM attempts WHERE status IN "
                                "('delivered', 'failed')")
        expected_ids = {r["span_id"] for r in finished}
        spans = rx.wait_for(
            lambda got: expected_ids <= {s.span_id for s in got}
            and sum(s.otel_kind == "inbound" for s in got) == result.messages,
        )
        transports = dict(rx.requests)
    other = "http" if protocol == "grpc" else "grpc"
    assert transports[other] == 0 and sum(transports.values()) > 0

    # The documented attributes, and nothing else, on every span.
    for s in spans:
        assert s.resource["service.name"] == DEMO_SERVICE
        assert set(s.attributes) <= DOCUMENTED, s.name
    traces = _by_trace(spans)

    # One trace per inbound message: inbound -> AI run -> (enqueue ->) attempts.
    for inbound_id in result.stories.values():
        (inbound,) = [s for s in spans if s.otel_kind == "inbound"
                      and s.attributes[A.INBOUND_ID] == inbound_id]
        story = traces[inbound.trace_id]
        assert inbound.kind == "SPAN_KIND_CONSUMER" and inbound.parent_id is None
        (run,) = [s for s in story if s.otel_kind == "ai_run"]
        assert run.parent_id == inbound.span_id and run.name.startswith("invoke_agent ")
        for attempt in (s for s in story if s.otel_kind == "deliver"):
            assert attempt.kind == "SPAN_KIND_CLIENT"
            assert attempt.name == f"send {attempt.attributes[A.CHANNEL]}"
            assert attempt.attributes[A.INBOUND_ID] == inbound_id
            assert {A.ATTEMPT, A.DELIVERY_ID, A.OUTCOME, A.MESSAGING_SYSTEM} <= set(
                attempt.attributes
            )

    def attempts(story: str) -> list[DecodedSpan]:
        inbound_id = result.stories[story]
        found = [s for s in spans if s.otel_kind == "deliver"
                 and s.attributes[A.INBOUND_ID] == inbound_id]
        return sorted(found, key=lambda s: int(str(s.attributes[A.ATTEMPT])))

    # Failed sends: span status ERROR and error.type, classified.
    timed_out = attempts("timed_out")
    assert [s.attributes[A.OUTCOME] for s in timed_out] == ["failed"] * 3
    assert all(s.status == "STATUS_CODE_ERROR" and s.attributes[A.ERROR_TYPE]
               and s.attributes[A.FAILURE_CLASS] == "transient" for s in timed_out)
    assert timed_out[-1].attributes[A.FINAL] is True
    (blocked,) = attempts("blocked")
    assert blocked.status == "STATUS_CODE_ERROR"
    assert blocked.attributes[A.FAILURE_CLASS] == "permanent"
    assert blocked.attributes[A.FINAL] is True
    (delivered,) = [s for s in attempts("rate_limited") if s.attributes[A.OUTCOME] == "delivered"]
    assert delivered.status != "STATUS_CODE_ERROR"

    # The swallowed enqueue failure reaches the collector too.
    enqueue_trace = traces[next(s.trace_id for s in spans if s.otel_kind == "inbound" and
                                s.attributes[A.INBOUND_ID] == result.stories["enqueue_failed"])]
    (enqueue,) = [s for s in enqueue_trace if s.otel_kind == "enqueue"]
    assert enqueue.attributes[A.OUTCOME] == "failed" and enqueue.status == "STATUS_CODE_ERROR"
    assert enqueue.attributes[A.ERROR_TYPE]

    # A retry after the restart: same trace, linked to the attempt before it.
    first, retry = attempts("retried_after_restart")
    assert retry.trace_id == first.trace_id
    assert [(link.span_id, link.attributes) for link in retry.links] == [
        (first.span_id, {"otel_delivery.link": "prior_attempt"})
    ]
    assert retry.attributes[A.OUTCOME] == "delivered"

    # The attempt killed mid-send never ended its span: it is in the store only. The
    # retry is in the backend, in the same trace, numbered from the store's rows.
    (crashed,) = _rows(store, "SELECT span_id, trace_id, status FROM attempts WHERE "
                              "inbound_id = ? AND attempt = 1", (result.stories["interrupted"],))
    assert crashed["status"] in ("started", "interrupted")
    assert crashed["span_id"] not in {s.span_id for s in spans}
    (after_crash,) = attempts("interrupted")
    assert after_crash.trace_id == crashed["trace_id"]
    assert after_crash.attributes[A.ATTEMPT] == 2
    assert after_crash.attributes[A.OUTCOME] == "delivered"


# -- a retry in a new process, over gRPC ---------------------------------------------------------


def test_a_retry_after_a_restart_joins_the_trace_over_grpc(tmp_path: Path) -> None:
    store = tmp_path / "deliveries.db"
    queued = tmp_path / "queue.json"

    @otel_delivery.deliver(channel="slack", delivery_id=arg("entry.id"), max_attempts=3,
                           carrier=arg("entry.trace"))
    def attempt(entry: dict[str, Any], fail: bool) -> dict[str, str]:
        if fail:
            raise ConnectionResetError("connection reset by peer")
        return {"ts": "1700000000.000100"}

    @otel_delivery.ai_run(agent="support-bot")
    def run() -> str:
        entry = {"id": "dlv-restart", "trace": otel_delivery.carry()}
        try:
            attempt(entry, fail=True)
        except ConnectionResetError:
            queued.write_text(json.dumps(entry))
        return "reply"

    @otel_delivery.inbound(channel="slack", inbound_id="sl-restart-1")
    def receive() -> None:
        run()

    with otlp_receiver() as rx:
        # Process 1: its own provider and exporter, then shut down (the "crash" is clean
        # here; the SIGKILL case is the demo's).
        first = otel_delivery.configure(store=store, tracer_provider=TracerProvider(),
                                        otlp_endpoint=rx.grpc_endpoint, otlp_protocol="grpc")
        receive()
        first.shutdown()
        # Process 2: a fresh provider, exporter and store writer; the entry from disk.
        second = otel_delivery.configure(store=store, tracer_provider=TracerProvider(),
                                         otlp_endpoint=rx.grpc_endpoint, otlp_protocol="grpc")
        try:
            assert attempt(json.loads(queued.read_text()), fail=False) == {
                "ts": "1700000000.000100"
            }
        finally:
            second.shutdown()
        spans = rx.wait_for(lambda got: sum(s.otel_kind == "deliver" for s in got) == 2)
    (inbound,) = [s for s in spans if s.otel_kind == "inbound"]
    (run_span,) = [s for s in spans if s.otel_kind == "ai_run"]
    failed, retry = sorted((s for s in spans if s.otel_kind == "deliver"),
                           key=lambda s: int(str(s.attributes[A.ATTEMPT])))
    assert {s.trace_id for s in spans} == {inbound.trace_id}
    assert failed.parent_id == retry.parent_id == run_span.span_id
    assert failed.status == "STATUS_CODE_ERROR"
    assert failed.attributes[A.ERROR_TYPE] == "ConnectionResetError"
    assert "exception" in failed.events
    assert [link.span_id for link in retry.links] == [failed.span_id]
    assert (retry.attributes[A.ATTEMPT], retry.attributes[A.OUTCOME]) == (2, "delivered")
    assert retry.attributes[A.PROVIDER_MESSAGE_ID] == "1700000000.000100"
    rows = _rows(store, "SELECT attempt, status, span_id FROM attempts ORDER BY attempt")
    assert [(r["attempt"], r["status"], r["span_id"]) for r in rows] == [
        (1, "failed", failed.span_id), (2, "delivered", retry.span_id),
    ]


# -- collector down -----------------------------------------------------------------------


CALLS = 30
# The documented hot-path bound is the store's 50 ms lock wait per row (start and end);
# export never runs on the caller's thread. The margin absorbs a slow CI machine.
PER_CALL_LIMIT_SECONDS = 0.5


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("collector", ["refused", "hanging"])
def test_a_dead_collector_neither_blocks_the_gateway_nor_loses_store_rows(
    protocol: str, collector: str, tmp_path: Path, hanging_endpoint: str
) -> None:
    endpoint = hanging_endpoint if collector == "hanging" else f"http://127.0.0.1:{free_port()}"
    store = tmp_path / "deliveries.db"
    otel = otel_delivery.configure(
        store=store, tracer_provider=TracerProvider(), otlp_endpoint=endpoint,
        otlp_protocol=protocol, shutdown_timeout_seconds=0.5,
    )

    @otel_delivery.deliver(channel="telegram", delivery_id=arg("n"))
    def send(n: int) -> dict[str, int]:
        if n % 3 == 0:
            raise TimeoutError("platform timed out")
        return {"message_id": n}

    durations: list[float] = []
    results: list[object] = []
    for n in range(CALLS):
        started = time.perf_counter()
        try:
            results.append(send(n))
        except TimeoutError as exc:
            results.append(type(exc))
        durations.append(time.perf_counter() - started)
    assert results == [TimeoutError if n % 3 == 0 else {"message_id": n} for n in range(CALLS)]
    assert max(durations) < PER_CALL_LIMIT_SECONDS, max(durations)

    started = time.monotonic()
    otel.shutdown()
    assert time.monotonic() - started < 2.0  # the bound is 0.5 s; exporters get cut off

    rows = _rows(store, "SELECT status, COUNT(*) AS n FROM attempts GROUP BY status")
    assert {r["status"]: r["n"] for r in rows} == {"failed": CALLS // 3,
                                                  "delivered": CALLS - CALLS // 3}


# -- a real collector hop: rotel ---------------------------------------------------------------


def _rotel_agent() -> Path:
    rotel = pytest.importorskip("rotel", reason="rotel (test extra) is not installed")
    agent = Path(rotel.__file__).parent / "rotel-agent"
    if not agent.exists():
        pytest.skip(f"the rotel package has no agent binary at {agent}")
    return agent


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout_seconds: float) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the collector exited early with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)  # polling a condition, with a deadline
    raise AssertionError(f"nothing listened on 127.0.0.1:{port} within {timeout_seconds} s")


@pytest.fixture
def rotel(tmp_path: Path) -> Iterator[tuple[OtlpReceiver, int, int]]:
    """rotel listening on OTLP gRPC and HTTP, forwarding over OTLP gRPC to our receiver."""
    agent = _rotel_agent()
    with otlp_receiver() as rx:
        grpc_port, http_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROTEL_")}
        proc = subprocess.Popen(
            [str(agent), "start",
             "--otlp-grpc-endpoint", f"127.0.0.1:{grpc_port}",
             "--otlp-http-endpoint", f"127.0.0.1:{http_port}",
             "--exporter", "otlp",
             "--otlp-exporter-endpoint", rx.grpc_endpoint,
             "--otlp-exporter-protocol", "grpc",
             "--batch-timeout", "50ms",
             "--pid-file", str(tmp_path / "rotel.pid"),
             "--log-file", str(tmp_path / "rotel.log")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
        )
        try:
            _wait_for_port(grpc_port, proc, 10)
            _wait_for_port(http_port, proc, 10)
            yield rx, grpc_port, http_port
        finally:
            proc.terminate()
            try:
                proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_through_a_real_collector_hop(
    protocol: str, tmp_path: Path, rotel: tuple[OtlpReceiver, int, int]
) -> None:
    rx, grpc_port, http_port = rotel
    port = grpc_port if protocol == "grpc" else http_port
    otel = otel_delivery.configure(
        store=tmp_path / "deliveries.db",
        tracer_provider=TracerProvider(resource=Resource.create({"service.name": "gw-1"})),
        otlp_endpoint=f"http://127.0.0.1:{port}", otlp_protocol=protocol,
    )

    @otel_delivery.deliver(channel="discord", delivery_id="dlv-hop", attempt=arg("attempt"),
                           max_attempts=2, carrier=arg("meta"))
    def send(meta: dict[str, str], attempt: int) -> dict[str, str]:
        if attempt == 1:
            raise ConnectionError("gateway unreachable")
        return {"id": "discord-msg-9"}

    @otel_delivery.ai_run(agent="support-bot", carrier=arg("meta"))
    def run(meta: dict[str, str]) -> str:
        with pytest.raises(ConnectionError):
            send(meta, 1)
        send(meta, 2)
        return "reply"

    @otel_delivery.inbound(channel="discord", inbound_id="dc-hop-1", carrier=arg("meta"))
    def receive(meta: dict[str, str]) -> None:
        run(meta)

    try:
        receive({})
        assert otel.force_flush(timeout_seconds=5)
    finally:
        otel.shutdown()
    spans = rx.wait_for(lambda got: len(got) >= 4)
    assert rx.requests["grpc"] > 0  # rotel re-exported; nothing came straight from the SDK
    assert len(spans) == 4
    assert {s.trace_id for s in spans} == {spans[0].trace_id}
    assert {s.resource["service.name"] for s in spans} == {"gw-1"}
    by_kind = {s.otel_kind: s for s in spans if s.otel_kind != "deliver"}
    failed, retry = sorted((s for s in spans if s.otel_kind == "deliver"),
                           key=lambda s: int(str(s.attributes[A.ATTEMPT])))
    assert by_kind["ai_run"].parent_id == by_kind["inbound"].span_id
    assert failed.parent_id == retry.parent_id == by_kind["ai_run"].span_id
    assert failed.status == "STATUS_CODE_ERROR"
    assert failed.attributes[A.ERROR_TYPE] == "ConnectionError"
    assert failed.attributes[A.FAILURE_CLASS] == "transient"
    assert failed.attributes[A.FINAL] is False
    assert retry.attributes[A.OUTCOME] == "delivered" and retry.attributes[A.FINAL] is True
    assert [link.span_id for link in retry.links] == [failed.span_id]


# -- the otelcol-contrib binary itself, when there is one -----------------------------------------


def _otelcol() -> str:
    built = CONFIG_DIR / ".bin" / "otelcol-delivery"
    binary = (os.environ.get("OTELCOL_BIN") or shutil.which("otelcol-contrib")
              or (str(built) if os.access(built, os.X_OK) else None))
    if not binary:
        pytest.skip(
            "no collector binary: run collector-config/build.sh (or set OTELCOL_BIN, or "
            "put otelcol-contrib v0.161.0 on PATH)"
        )
    return binary


def test_otelcol_contrib_validates_the_config_and_keeps_a_failed_trace(tmp_path: Path) -> None:
    binary = _otelcol()
    with otlp_receiver() as rx:
        backend = rx.grpc_endpoint.removeprefix("http://")
        grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
        env = {
            **os.environ,
            "OTELCOL_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{grpc_port}",
            "OTELCOL_OTLP_HTTP_ENDPOINT": f"127.0.0.1:{http_port}",
            "OTELCOL_HEALTH_ENDPOINT": f"127.0.0.1:{free_port()}",
            "OTELCOL_PROMETHEUS_ENDPOINT": f"127.0.0.1:{metrics_port}",
            "OTELCOL_TELEMETRY_HOST": "127.0.0.1",
            "OTELCOL_JAEGER_ENDPOINT": backend,
            "OTELCOL_TEMPO_ENDPOINT": backend,
            "OTELCOL_DECISION_WAIT": "1s",
            "OTELCOL_SAMPLING_PERCENT": "0",
        }
        config = str(CONFIG_DIR / "otelcol.yaml")
        validate = subprocess.run([binary, "validate", f"--config={config}"], env=env,
                                  capture_output=True, text=True, timeout=60)
        assert validate.returncode == 0, validate.stderr
        proc = subprocess.Popen([binary, f"--config={config}"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            _wait_for_port(grpc_port, proc, 30)
            otel = otel_delivery.configure(
                store=tmp_path / "deliveries.db", tracer_provider=TracerProvider(),
                otlp_endpoint=f"http://127.0.0.1:{grpc_port}", otlp_protocol="grpc",
            )

            @otel_delivery.deliver(channel="whatsapp", delivery_id=arg("delivery_id"))
            def send(delivery_id: str, fail: bool) -> None:
                if fail:
                    raise PermissionError("recipient blocked the bot")

            with pytest.raises(PermissionError):
                send("dlv-kept", True)
            try:
                assert otel.force_flush(timeout_seconds=5)
            finally:
                otel.shutdown()
            # Kept by the failure policy, exported to both backends (both point here).
            spans = rx.wait_for(
                lambda got: sum(s.attributes.get(A.DELIVERY_ID) == "dlv-kept" for s in got) >= 2,
                timeout_seconds=30,
            )
            assert all(s.status == "STATUS_CODE_ERROR" for s in spans)
            deadline = time.monotonic() + 30
            metrics = ""
            while "otel_delivery_channel=\"whatsapp\"" not in metrics:
                assert time.monotonic() < deadline, metrics[-2000:]
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                            timeout=5) as response:
                    metrics = response.read().decode()
                if "otel_delivery_channel=\"whatsapp\"" not in metrics:
                    time.sleep(0.5)  # polling a condition, with a deadline
            assert "traces_span_metrics_calls_total" in metrics
        finally:
            proc.terminate()
            try:
                proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
