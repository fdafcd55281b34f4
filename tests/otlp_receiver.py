"""A real OTLP trace receiver for tests: HTTP/protobuf and gRPC on 127.0.0.1.

It decodes every export request with ``opentelemetry-proto`` and turns the spans into
plain data, so tests assert on what actually crossed the wire, not on mocks. Waiting
is done on a condition with a deadline, never with a sleep.
"""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc  # type: ignore[import-untyped]
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

AttributeValue = str | bool | int | float | list[Any] | None


def _value(v: AnyValue) -> AttributeValue:
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    if which in ("string_value", "bool_value", "int_value", "double_value"):
        return getattr(v, which)  # type: ignore[no-any-return]
    return str(getattr(v, which))


def _attributes(kvs: Any) -> dict[str, AttributeValue]:
    return {kv.key: _value(kv.value) for kv in kvs if isinstance(kv, KeyValue)}


@dataclass(frozen=True)
class Link:
    trace_id: str
    span_id: str
    attributes: dict[str, AttributeValue]


@dataclass(frozen=True)
class DecodedSpan:
    """One span as received over OTLP, ids in lowercase hex."""

    name: str
    kind: str  # SPAN_KIND_CONSUMER, ...
    trace_id: str
    span_id: str
    parent_id: str | None
    status: str  # STATUS_CODE_ERROR, ...
    attributes: dict[str, AttributeValue]
    resource: dict[str, AttributeValue]
    links: list[Link] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    start_ns: int = 0
    end_ns: int = 0

    @property
    def otel_kind(self) -> str | None:
        value = self.attributes.get("otel_delivery.kind")
        return value if isinstance(value, str) else None


def decode(request: ExportTraceServiceRequest) -> list[DecodedSpan]:
    spans: list[DecodedSpan] = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for s in scope_spans.spans:
                spans.append(
                    DecodedSpan(
                        name=s.name,
                        kind=Span.SpanKind.Name(s.kind),
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_id=s.parent_span_id.hex() or None,
                        status=Status.StatusCode.Name(s.status.code),
                        attributes=_attributes(s.attributes),
                        resource=resource,
                        links=[
                            Link(link.trace_id.hex(), link.span_id.hex(),
                                 _attributes(link.attributes))
                            for link in s.links
                        ],
                        events=[e.name for e in s.events],
                        start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano,
                    )
                )
    return spans


class OtlpReceiver:
    """Collects decoded spans from both transports; tests read and wait on them."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._spans: list[DecodedSpan] = []
        self.requests = {"http": 0, "grpc": 0}
        self.http_endpoint = ""
        self.grpc_endpoint = ""

    def accept(self, transport: str, request: ExportTraceServiceRequest) -> None:
        with self._cond:
            self.requests[transport] += 1
            self._spans.extend(decode(request))
            self._cond.notify_all()

    def spans(self) -> list[DecodedSpan]:
        with self._cond:
            return list(self._spans)

    def wait_for(
        self, predicate: Callable[[list[DecodedSpan]], bool], timeout_seconds: float = 10.0
    ) -> list[DecodedSpan]:
        """Block until ``predicate(spans)`` holds; fail the test at the deadline."""
        with self._cond:
            ok = self._cond.wait_for(lambda: predicate(self._spans), timeout_seconds)
            spans = list(self._spans)
        if not ok:
            raise AssertionError(
                f"the receiver did not get the expected spans within {timeout_seconds} s; "
                f"it has {len(spans)}: {sorted(s.name for s in spans)}"
            )
        return spans


def _http_handler(receiver: OtlpReceiver) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path.rstrip("/") != "/v1/traces":
                self.send_error(404)
                return
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            receiver.accept("http", request)
            payload = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            return

    return Handler


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self.receiver = receiver

    def Export(  # the gRPC method's name
        self, request: ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> ExportTraceServiceResponse:
        self.receiver.accept("grpc", request)
        return ExportTraceServiceResponse()


@contextmanager
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """Start both transports on ephemeral loopback ports; stop them on exit."""
    receiver = OtlpReceiver()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _http_handler(receiver))
    http_thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    http_thread.start()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
        _TraceService(receiver), server
    )
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    receiver.http_endpoint = f"http://127.0.0.1:{httpd.server_address[1]}"
    receiver.grpc_endpoint = f"http://127.0.0.1:{grpc_port}"
    try:
        yield receiver
    finally:
        server.stop(grace=None)
        httpd.shutdown()
        httpd.server_close()
        http_thread.join(timeout=5)


def free_port() -> int:
    """A loopback port nobody listens on right now (for a child process to bind)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
