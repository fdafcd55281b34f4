"""The fleet path's real processes for tests: our collector build and Jaeger v2.

Both are built by ``collector-config/build.sh`` into ``collector-config/.bin/``; tests
that need them skip, naming that command, when they are absent. Every process listens
on 127.0.0.1 at ports picked at run time, and is stopped (terminate, then kill) by the
context manager that started it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from .otlp_receiver import free_port

CONFIG_DIR = Path(__file__).resolve().parent.parent / "collector-config"
BIN_DIR = CONFIG_DIR / ".bin"
OTELCOL = BIN_DIR / "otelcol-delivery"
JAEGER = BIN_DIR / "jaeger"
BUILD_COMMAND = "collector-config/build.sh"

T = TypeVar("T")


def require_binaries() -> None:
    missing = [p.name for p in (OTELCOL, JAEGER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.skip(
            f"fleet binaries missing in collector-config/.bin/ ({', '.join(missing)}): "
            f"run {BUILD_COMMAND} (needs Go 1.26 and the Go module proxy)"
        )


def poll(
    fetch: Callable[[], T], done: Callable[[T], bool], *, timeout_seconds: float,
    what: str, interval: float = 0.25,
) -> T:
    """``fetch()`` until ``done(value)``, within a deadline; the last value on success."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        value = fetch()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_seconds} s waiting for {what}; "
                                 f"last value: {str(value)[-1500:]}")
        time.sleep(interval)  # polling a condition, with a deadline


def http_get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body: bytes = response.read()
    return body.decode()


def wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"{proc.args!r} exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            )
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)  # polling a condition, with a deadline
    raise AssertionError(f"nothing listened on 127.0.0.1:{port} within {timeout} s:\n"
                         f"{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# -- Jaeger ------------------------------------------------------------------------------


@dataclass
class Jaeger:
    otlp_grpc: str  # host:port
    query_url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def services(self) -> list[str]:
        data = json.loads(http_get(f"{self.query_url}/api/services"))
        return list(data.get("data") or [])

    def traces(self, service: str, tags: dict[str, str] | None = None,
               limit: int = 5000, lookback: str = "1h") -> list[dict[str, Any]]:
        """The v1 query API, as the UI's search form sends it: service and tags."""
        params = {"service": service, "limit": str(limit), "lookback": lookback}
        if tags:
            params["tags"] = json.dumps(tags)
        url = f"{self.query_url}/api/traces?{urllib.parse.urlencode(params)}"
        return list(json.loads(http_get(url, timeout=30)).get("data") or [])

    def trace(self, trace_id: str) -> dict[str, Any] | None:
        try:
            data = json.loads(http_get(f"{self.query_url}/api/traces/{trace_id}"))
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise
        found = data.get("data") or []
        return found[0] if found else None


def span_tags(span: dict[str, Any]) -> dict[str, Any]:
    return {t["key"]: t["value"] for t in span.get("tags", [])}


@contextmanager
def run_jaeger(workdir: Path) -> Iterator[Jaeger]:
    otlp_port, query_port = free_port(), free_port()
    env = {
        **os.environ,
        "JAEGER_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{otlp_port}",
        "JAEGER_QUERY_ENDPOINT": f"127.0.0.1:{query_port}",
        "JAEGER_QUERY_GRPC_ENDPOINT": f"127.0.0.1:{free_port()}",
        "JAEGER_HEALTH_ENDPOINT": f"127.0.0.1:{free_port()}",
    }
    log = workdir / "jaeger.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(JAEGER), f"--config={CONFIG_DIR / 'jaeger.yaml'}"],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(otlp_port, proc, log, 60)
        wait_for_port(query_port, proc, log, 60)
        yield Jaeger(f"127.0.0.1:{otlp_port}", f"http://127.0.0.1:{query_port}", proc, log)
    finally:
        stop(proc)


# -- the collector --------------------------------------------------------------------------


@dataclass
class Collector:
    env: dict[str, str]
    grpc_port: int
    http_port: int
    metrics_url: str  # the span metrics (prometheus exporter)
    telemetry_url: str  # the collector's own metrics
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = field(default=0)

    @property
    def grpc_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(OTELCOL), f"--config={CONFIG_DIR / 'otelcol.yaml'}"],
                env=self.env, stdout=out, stderr=subprocess.STDOUT,
            )
        self.starts += 1
        wait_for_port(self.grpc_port, self.proc, self.log, 60)
        wait_for_port(int(self.metrics_url.rsplit(":", 1)[1].split("/")[0]), self.proc,
                      self.log, 60)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            stop(self.proc, sig)

    def span_metrics(self) -> str:
        return http_get(self.metrics_url)

    def telemetry(self) -> str:
        return http_get(self.telemetry_url)


def collector_env(jaeger: Jaeger, **overrides: str) -> dict[str, str]:
    """The documented variables, pointed at 127.0.0.1 and at this Jaeger (for Tempo too:
    Tempo is not built here, so both exporters send to Jaeger unless overridden)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTELCOL_")}
    env.update({
        "OTELCOL_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{free_port()}",
        "OTELCOL_OTLP_HTTP_ENDPOINT": f"127.0.0.1:{free_port()}",
        "OTELCOL_HEALTH_ENDPOINT": f"127.0.0.1:{free_port()}",
        "OTELCOL_PROMETHEUS_ENDPOINT": f"127.0.0.1:{free_port()}",
        "OTELCOL_TELEMETRY_HOST": "127.0.0.1",
        "OTELCOL_TELEMETRY_PORT": str(free_port()),
        "OTELCOL_JAEGER_ENDPOINT": jaeger.otlp_grpc,
        "OTELCOL_TEMPO_ENDPOINT": jaeger.otlp_grpc,
        "OTELCOL_SPAN_METRICS_FLUSH_INTERVAL": "1s",
    })
    env.update(overrides)
    return env


@contextmanager
def run_collector(workdir: Path, env: dict[str, str]) -> Iterator[Collector]:
    port = lambda name: int(env[name].rsplit(":", 1)[1])  # noqa: E731
    collector = Collector(
        env=env,
        grpc_port=port("OTELCOL_OTLP_GRPC_ENDPOINT"),
        http_port=port("OTELCOL_OTLP_HTTP_ENDPOINT"),
        metrics_url=f"http://{env['OTELCOL_PROMETHEUS_ENDPOINT']}/metrics",
        telemetry_url=f"http://127.0.0.1:{env['OTELCOL_TELEMETRY_PORT']}/metrics",
        log=workdir / "otelcol.log",
    )
    try:
        collector.start()
        yield collector
    finally:
        collector.stop()


# -- Prometheus text format -------------------------------------------------------------------

_SAMPLE = re.compile(r'^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m:
            out.append((m.group(1), dict(_LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return out


def metric_sum(text: str, name: str, **labels: str) -> float:
    return sum(v for n, ls, v in samples(text)
               if n == name and all(ls.get(k) == want for k, want in labels.items()))
