"""collector-config/ is code: parse it, wire it, and hold it to the spans we really emit.

The attribute facts come from spans produced by the real decorators (and the demo
gateway) into an in-memory exporter, never from a hand-written list, so renaming an
attribute in ``_attributes.py`` breaks these tests until the config follows.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import shutil
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import otel_delivery
from otel_delivery import arg
from otel_delivery.demo import run_demo

from .conftest import _OTEL_ENV, make_traced

CONFIG_DIR = Path(__file__).resolve().parent.parent / "collector-config"
PINNED_VERSION = "0.161.0"
MESSAGES = 12  # distinct messages in the decorator run, for the cardinality check


def _load(name: str) -> Any:
    return yaml.safe_load((CONFIG_DIR / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    loaded = _load("otelcol.yaml")
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = _load("docker-compose.yaml")
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def readme() -> str:
    return (CONFIG_DIR / "README.md").read_text(encoding="utf-8")


# -- the spans our decorators really emit -------------------------------------------------


@dataclass(frozen=True)
class Emitted:
    spans: list[ReadableSpan]  # every span: targeted calls and the demo gateway
    per_message: list[ReadableSpan]  # the targeted calls, one trace per message

    def values(self, key: str, spans: list[ReadableSpan] | None = None) -> list[Any]:
        return [
            (s.attributes or {})[key]
            for s in (self.spans if spans is None else spans)
            if key in (s.attributes or {})
        ]

    @property
    def attribute_names(self) -> set[str]:
        return {k for s in self.spans for k in (s.attributes or {})}

    def traces(self) -> dict[int, list[ReadableSpan]]:
        by_trace: dict[int, list[ReadableSpan]] = defaultdict(list)
        for s in self.spans:
            by_trace[s.context.trace_id].append(s)
        return dict(by_trace)


class Blocked(Exception):
    """Stands in for a channel API's 'bot was blocked by the user'."""


def _exercise_decorators(store: Path) -> list[ReadableSpan]:
    """Every decorator, every outcome, for MESSAGES distinct messages on two channels."""
    traced = make_traced(store)
    try:
        @otel_delivery.inbound(
            channel=arg("channel"), inbound_id=arg("msg_id"), sender=arg("chat"),
            conversation=arg("chat"),
        )
        def receive(channel: str, msg_id: str, chat: str, fail: bool = False) -> None:
            if fail:
                raise ValueError("malformed update")

        @otel_delivery.ai_run(agent="support-bot", model="fake-model")
        def run(text: str, fail: bool = False) -> str:
            if fail:
                raise RuntimeError("model overloaded")
            return text.upper()

        @otel_delivery.enqueue(delivery_id=arg("delivery_id"), recipient=arg("chat"))
        def enqueue(delivery_id: str, chat: str, fail: bool = False) -> None:
            if fail:
                raise OSError("queue directory is read-only")

        @otel_delivery.deliver(
            recipient=arg("chat"), delivery_id=arg("delivery_id"), attempt=arg("attempt"),
            max_attempts=3,
            classifier=lambda exc: "permanent" if isinstance(exc, Blocked) else None,
        )
        def send(
            delivery_id: str, chat: str, attempt: int, error: Exception | None
        ) -> dict[str, str]:
            if error is not None:
                raise error
            return {"message_id": f"provider-{delivery_id}-{attempt}"}

        @otel_delivery.deliver(recipient=arg("chat"), delivery_id=arg("delivery_id"))
        async def send_cancelled(delivery_id: str, chat: str) -> None:
            raise asyncio.CancelledError

        for i in range(MESSAGES):
            channel = ("telegram", "slack")[i % 2]
            msg_id, chat, delivery_id = f"in-{i}", f"chat-{1000 + i}", f"dlv-{i}"
            story = i % 6

            @otel_delivery.inbound(channel=channel, inbound_id=msg_id)
            def handle(
                story: int = story, chat: str = chat, delivery_id: str = delivery_id
            ) -> None:
                if story == 5:
                    try:
                        run("boom", fail=True)
                    except RuntimeError:
                        pass
                    return
                reply = run("hello")
                if story == 4:
                    return  # the reply vanishes: no enqueue, no send
                try:
                    enqueue(delivery_id, chat, fail=(story == 3))
                except OSError:
                    return  # the gateway's .catch(() => null)
                if story == 0:
                    send(delivery_id, chat, 1, None)
                elif story == 1:
                    with pytest.raises(TimeoutError):
                        send(delivery_id, chat, 1, TimeoutError("timed out"))
                    send(delivery_id, chat, 2, None)
                elif story == 2:
                    with pytest.raises(Blocked):
                        send(delivery_id, chat, 1, Blocked("bot was blocked by the user"))
                assert reply == "HELLO"

            handle()

        receive("telegram", "in-bad", "chat-9", fail=False)
        with pytest.raises(ValueError):
            receive("telegram", "in-bad-2", "chat-9", fail=True)
        with pytest.raises(asyncio.CancelledError):
            asyncio.run(send_cancelled("dlv-cancelled", "chat-7"))
        return traced.spans()
    finally:
        traced.handle.shutdown()


@pytest.fixture(scope="module")
def emitted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emitted]:
    with pytest.MonkeyPatch.context() as mp:
        for name in _OTEL_ENV:
            mp.delenv(name, raising=False)
        tmp = tmp_path_factory.mktemp("emitted")
        mp.setenv("XDG_STATE_HOME", str(tmp / "xdg"))
        targeted = _exercise_decorators(tmp / "targeted.db")
        provider = TracerProvider()
        exporter = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        run_demo(store=tmp / "demo.db", messages=MESSAGES, out=io.StringIO(),
                 tracer_provider=provider)
        yield Emitted(targeted + list(exporter.get_finished_spans()), targeted)


def test_the_decorator_run_covers_every_outcome(emitted: Emitted) -> None:
    # The facts below are only as good as the spans they are drawn from.
    pairs = {
        (a.get("otel_delivery.kind"), a.get("otel_delivery.outcome"))
        for a in (s.attributes or {} for s in emitted.spans)
    }
    assert {
        ("deliver", "delivered"), ("deliver", "failed"), ("deliver", "interrupted"),
        ("enqueue", "ok"), ("enqueue", "failed"), ("inbound", "failed"), ("ai_run", "failed"),
    } <= pairs
    assert set(emitted.values("otel_delivery.failure_class")) == {"permanent", "transient"}


# -- otelcol.yaml: structure ------------------------------------------------------------------


def _component_kind(name: str) -> str:
    """`otlp_grpc/jaeger` -> `otlp_grpc`: the part the collector looks up."""
    return name.split("/", 1)[0]


def test_the_config_names_its_pinned_version_and_so_does_compose(
    config: dict[str, Any], compose: dict[str, Any], readme: str
) -> None:
    header = (CONFIG_DIR / "otelcol.yaml").read_text(encoding="utf-8").split("\n\n", 1)[0]
    assert f"otelcol-contrib v{PINNED_VERSION}" in header
    image = compose["services"]["otel-collector"]["image"]
    assert image == f"otel/opentelemetry-collector-contrib:{PINNED_VERSION}"
    assert f"otelcol-contrib v{PINNED_VERSION}" in readme


def test_component_names_are_the_pinned_releases(config: dict[str, Any]) -> None:
    exporters = {_component_kind(n) for n in config["exporters"]}
    connectors = {_component_kind(n) for n in config["connectors"]}
    # v0.144 renamed otlp/otlphttp to otlp_grpc/otlp_http; span_metrics replaced spanmetrics.
    assert exporters <= {"otlp_grpc", "otlp_http", "prometheus"}
    assert connectors == {"span_metrics", "forward"}
    assert {_component_kind(n) for n in config["processors"]} == {
        "memory_limiter", "batch", "tail_sampling", "filter",
    }
    assert set(config["receivers"]) == {"otlp"}
    assert set(config["extensions"]) == {"health_check"}


def test_every_component_used_is_defined_and_every_defined_one_is_used(
    config: dict[str, Any],
) -> None:
    service = config["service"]
    used: dict[str, set[str]] = defaultdict(set)
    for pipeline in service["pipelines"].values():
        for role in ("receivers", "processors", "exporters"):
            for name in pipeline.get(role, []):
                # A connector is an exporter of one pipeline and a receiver of another.
                section = "connectors" if name in config["connectors"] else role
                used[section].add(name)
    used["extensions"] = set(service["extensions"])
    for section in ("receivers", "processors", "exporters", "connectors", "extensions"):
        assert used[section] == set(config[section]), section


def test_each_connector_joins_two_pipelines(config: dict[str, Any]) -> None:
    pipelines = config["service"]["pipelines"]
    for name in config["connectors"]:
        exported_by = [p for p, cfg in pipelines.items() if name in cfg.get("exporters", [])]
        received_by = [p for p, cfg in pipelines.items() if name in cfg.get("receivers", [])]
        assert exported_by and received_by, name


def test_memory_limiter_first_at_the_entrance_and_no_batch_before_sampling(
    config: dict[str, Any],
) -> None:
    pipelines = config["service"]["pipelines"]
    for name, pipeline in pipelines.items():
        processors = [_component_kind(p) for p in pipeline.get("processors", [])]
        if "otlp" in pipeline["receivers"]:
            # Refused at the door, before the fan-out: a retry duplicates nothing.
            assert processors == ["memory_limiter"], name
        else:
            assert "memory_limiter" not in processors, name
        if "tail_sampling" in processors:
            # Tail sampling regroups by trace: a batch before it only adds delay.
            assert "batch" not in processors[: processors.index("tail_sampling")], name
        if any(_component_kind(e) == "otlp_grpc" for e in pipeline["exporters"]):
            assert processors[-1] == "batch", name


def _connector_kind(name: str) -> str:
    return _component_kind(name)


def test_span_metrics_are_computed_before_sampling(config: dict[str, Any]) -> None:
    pipelines = config["service"]["pipelines"]
    (ingest,) = [p for p in pipelines.values() if "otlp" in p["receivers"]]
    assert not any(_component_kind(p) == "tail_sampling" for p in ingest["processors"])
    assert {_connector_kind(e) for e in ingest["exporters"]} == {"span_metrics", "forward"}
    (sampled,) = [p for p in pipelines.values()
                  if "tail_sampling" in p.get("processors", [])]
    assert sampled["receivers"][0] in ingest["exporters"]
    assert {_component_kind(e) for e in sampled["exporters"]} == {"otlp_grpc"}
    (metrics,) = [p for p in pipelines.values() if "span_metrics" in p["receivers"]]
    assert metrics["exporters"] == ["prometheus"]


_EVIDENCE_CONDITION = re.compile(r"\s+")


def _filter_condition(config: dict[str, Any], name: str) -> str:
    (condition,) = config["processors"][name]["traces"]["span"]
    return _EVIDENCE_CONDITION.sub(" ", condition).strip()


def test_failure_evidence_goes_around_sampling_exactly_once(config: dict[str, Any]) -> None:
    """A late failure must not follow a buffered "not sampled" decision (issue 16): the
    failures pipeline takes every span from the entrance, keeps only failure evidence and
    exports it; the sampled pipeline drops that same evidence after tail sampling."""
    pipelines = config["service"]["pipelines"]
    (ingest,) = [p for p in pipelines.values() if "otlp" in p["receivers"]]
    (failures,) = [p for p in pipelines.values()
                   if "filter/failure_evidence_only" in p.get("processors", [])]
    (sampled,) = [p for p in pipelines.values()
                  if "tail_sampling" in p.get("processors", [])]
    assert failures["receivers"][0] in ingest["exporters"]
    assert "tail_sampling" not in failures["processors"]
    assert failures["processors"][0] == "filter/failure_evidence_only"
    assert failures["exporters"] == sampled["exporters"]
    after = sampled["processors"][sampled["processors"].index("tail_sampling") + 1:]
    assert "filter/without_failure_evidence" in after
    # The two filters are one predicate and its negation (each drops what matches).
    keep_only = _filter_condition(config, "filter/failure_evidence_only")
    without = _filter_condition(config, "filter/without_failure_evidence")
    assert keep_only == f"not ({without})"
    for needle in ('attributes["otel_delivery.outcome"] == "failed"',
                   'attributes["otel_delivery.outcome"] == "interrupted"',
                   "status.code == STATUS_CODE_ERROR",
                   'attributes["otel_delivery.attempt"] >= 2'):
        assert needle in without, needle


def test_receivers_listen_on_the_standard_otlp_ports(config: dict[str, Any]) -> None:
    protocols = config["receivers"]["otlp"]["protocols"]
    assert _default(protocols["grpc"]["endpoint"]).endswith(":4317")
    assert _default(protocols["http"]["endpoint"]).endswith(":4318")


# -- environment variables ----------------------------------------------------------------

_ENV_REF = re.compile(r"\$\{env:([A-Z0-9_]+)(?::-([^}]*))?\}")
_COMPOSE_REF = re.compile(r"\$\{([A-Z0-9_]+)(?::-([^}]*))?\}")


def _default(value: Any) -> str:
    """A config value with each ${env:NAME:-default} replaced by its default."""
    return _ENV_REF.sub(lambda m: m.group(2) or "", str(value))


def _without_comments(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def _documented_variables(readme: str) -> dict[str, str]:
    """`| `NAME` | `default` | ... |` rows of the README's table."""
    rows = re.findall(r"^\| `([A-Z0-9_]+)` \| (?:`([^`]*)`|empty) \|", readme, re.MULTILINE)
    return {name: default for name, default in rows}


def test_every_collector_variable_has_a_default_and_is_documented(readme: str) -> None:
    text = _without_comments((CONFIG_DIR / "otelcol.yaml").read_text(encoding="utf-8"))
    refs = _ENV_REF.findall(text)
    assert len(refs) >= 15
    documented = _documented_variables(readme)
    for name, default in refs:
        assert f"${{env:{name}:-" in text, f"{name} has no default"
        assert name in documented, f"{name} is not in collector-config/README.md"
        assert documented[name] == default, f"README gives {name} a different default"


def test_every_compose_variable_is_documented(readme: str) -> None:
    text = _without_comments((CONFIG_DIR / "docker-compose.yaml").read_text(encoding="utf-8"))
    for name, _default_value in _COMPOSE_REF.findall(text):
        assert f"`{name}`" in readme, f"{name} (docker-compose.yaml) is not documented"


def test_exporters_take_endpoint_and_tls_from_the_environment(config: dict[str, Any]) -> None:
    for name in ("otlp_grpc/jaeger", "otlp_grpc/tempo"):
        exporter = config["exporters"][name]
        assert _ENV_REF.fullmatch(exporter["endpoint"]), name
        for key in ("insecure", "ca_file"):
            assert _ENV_REF.fullmatch(str(exporter["tls"][key])), (name, key)
    assert _ENV_REF.fullmatch(config["exporters"]["prometheus"]["endpoint"])


# -- tail sampling ------------------------------------------------------------------------


def _seconds(duration: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert m, duration
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def test_decision_wait_fits_an_ai_run_plus_retries_and_the_cache_keeps_late_spans(
    config: dict[str, Any],
) -> None:
    sampling = config["processors"]["tail_sampling"]
    assert 60 <= _seconds(_default(sampling["decision_wait"])) <= 600
    cache = sampling["decision_cache"]
    assert int(_default(cache["sampled_cache_size"])) > int(_default(sampling["num_traces"]))
    # A cached "drop" would drop a failure that arrives after the decision.
    assert cache["non_sampled_cache_size"] == 0


def test_the_baseline_rate_comes_from_the_environment(config: dict[str, Any]) -> None:
    (baseline,) = [
        p for p in config["processors"]["tail_sampling"]["policies"]
        if p["type"] == "probabilistic"
    ]
    value = baseline["probabilistic"]["sampling_percentage"]
    assert _ENV_REF.fullmatch(value)
    assert 0 <= float(_default(value)) <= 100


def _policies(config: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def walk(policy: dict[str, Any]) -> None:
        found.append(policy)
        for sub in policy.get("and", {}).get("and_sub_policy", []):
            walk(sub)

    for p in config["processors"]["tail_sampling"]["policies"]:
        walk(p)
    return found


_OTTL_ATTRIBUTE = re.compile(r'attributes\["([^"]+)"\](?:\s*==\s*"([^"]*)")?')


def test_sampling_rules_name_only_attributes_and_values_the_decorators_emit(
    config: dict[str, Any], emitted: Emitted
) -> None:
    checked = 0
    for policy in _policies(config):
        kind = policy["type"]
        if kind == "string_attribute":
            cfg = policy["string_attribute"]
            assert set(cfg["values"]) <= set(emitted.values(cfg["key"])), policy["name"]
            checked += 1
        elif kind == "boolean_attribute":
            cfg = policy["boolean_attribute"]
            assert cfg["value"] in emitted.values(cfg["key"]), policy["name"]
            checked += 1
        elif kind == "numeric_attribute":
            cfg = policy["numeric_attribute"]
            values = emitted.values(cfg["key"])
            assert values and all(isinstance(v, int) for v in values), policy["name"]
            assert any(v >= cfg["min_value"] for v in values), policy["name"]
            checked += 1
        elif kind == "ottl_condition":
            for condition in policy["ottl_condition"]["span"]:
                refs = _OTTL_ATTRIBUTE.findall(condition)
                assert refs, condition
                for key, value in refs:
                    assert key in emitted.attribute_names, key
                    if value:
                        assert value in emitted.values(key), (key, value)
                checked += 1
    assert checked >= 5


def _keeps(policy: dict[str, Any], spans: list[ReadableSpan]) -> bool:
    """The tail sampler's decision for one policy over one whole trace.

    The probabilistic baseline counts as 0 %, and OTTL conditions are not interpreted
    here (their attribute names are checked above), so what this says "keep" is kept
    by rule, whatever the sampling percentage.
    """
    attrs = [dict(s.attributes or {}) for s in spans]
    kind = policy["type"]
    if kind == "string_attribute":
        cfg = policy["string_attribute"]
        hit = any(a.get(cfg["key"]) in cfg["values"] for a in attrs)
        return not hit if cfg.get("invert_match") else hit
    if kind == "boolean_attribute":
        cfg = policy["boolean_attribute"]
        return any(a.get(cfg["key"]) is cfg["value"] for a in attrs)
    if kind == "numeric_attribute":
        cfg = policy["numeric_attribute"]
        return any(
            isinstance(a.get(cfg["key"]), int) and a[cfg["key"]] >= cfg["min_value"]
            for a in attrs
        )
    if kind == "status_code":
        codes = set(policy["status_code"]["status_codes"])
        return any(s.status.status_code.name in codes for s in spans)
    if kind == "and":
        return all(_keeps(sub, spans) for sub in policy["and"]["and_sub_policy"])
    if kind in ("probabilistic", "ottl_condition"):
        return False
    raise AssertionError(f"no evaluator for tail sampling policy type {kind!r}")


def test_every_failure_is_kept_and_healthy_traces_are_left_to_the_sample(
    config: dict[str, Any], emitted: Emitted
) -> None:
    policies = config["processors"]["tail_sampling"]["policies"]
    kept_failures = healthy = 0
    for trace_id, spans in emitted.traces().items():
        kept = any(_keeps(p, spans) for p in policies)
        outcomes = {(s.attributes or {}).get("otel_delivery.outcome") for s in spans}
        if outcomes & {"failed", "interrupted"} or any(
            s.status.status_code.name == "ERROR" for s in spans
        ):
            assert kept, f"trace {trace_id:032x} has a failure but no policy keeps it"
            kept_failures += 1
        elif "delivered" in outcomes and not any(
            (s.attributes or {}).get("otel_delivery.attempt") not in (None, 1) for s in spans
        ):
            # Otherwise OTELCOL_SAMPLING_PERCENT would mean nothing.
            assert not kept, f"healthy trace {trace_id:032x} kept by rule"
            healthy += 1
    assert kept_failures >= 8 and healthy >= 3


def test_a_reply_that_vanished_without_an_error_is_kept(
    config: dict[str, Any], emitted: Emitted
) -> None:
    policies = config["processors"]["tail_sampling"]["policies"]
    vanished = [
        spans for spans in emitted.traces().values()
        if any((s.attributes or {}).get("otel_delivery.reply_produced") is True for s in spans)
        and not any((s.attributes or {}).get("otel_delivery.kind") in ("deliver", "enqueue")
                    for s in spans)
    ]
    assert vanished
    for spans in vanished:
        assert any(_keeps(p, spans) for p in policies)


# -- span metrics -------------------------------------------------------------------------

# The span-metrics connector's own dimensions, and the histogram's bucket label.
CONNECTOR_LABELS = {"service_name", "span_name", "span_kind", "status_code", "le"}


def _label(attribute: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", attribute)


def _metric_names(config: dict[str, Any]) -> set[str]:
    connector = config["connectors"]["span_metrics"]
    namespace = _label(connector["namespace"])
    unit = {"s": "seconds", "ms": "milliseconds"}[connector["histogram"]["unit"]]
    duration = f"{namespace}_duration_{unit}"
    return {f"{namespace}_calls_total", f"{duration}_bucket", f"{duration}_sum",
            f"{duration}_count"}


def _metric_labels(config: dict[str, Any]) -> set[str]:
    dims = config["connectors"]["span_metrics"]["dimensions"]
    return CONNECTOR_LABELS | {_label(d["name"]) for d in dims}


def _varies_per_message(emitted: Emitted, key: str) -> bool:
    """True when ``key`` takes a new value for (nearly) every message that carries it."""
    values: set[str] = set()
    messages: set[str] = set()
    for span in emitted.per_message:
        attrs = span.attributes or {}
        if key in attrs:
            values.add(str(attrs[key]))
            messages.add(str(attrs.get("otel_delivery.inbound_id")))
    return len(messages) >= 4 and len(values) >= len(messages)


def test_span_metric_dimensions_are_emitted_and_never_per_message(
    config: dict[str, Any], emitted: Emitted
) -> None:
    connector = config["connectors"]["span_metrics"]
    dimensions = [d["name"] for d in connector["dimensions"]]
    assert {"otel_delivery.channel", "otel_delivery.outcome", "error.type",
            "otel_delivery.failure_class"} <= set(dimensions)
    # Attributes that take a new value for every message (ids of chats, users,
    # messages, deliveries), found from the spans rather than listed by hand.
    per_message = {key for key in emitted.attribute_names if _varies_per_message(emitted, key)}
    assert {"otel_delivery.inbound_id", "otel_delivery.recipient",
            "otel_delivery.delivery_id"} <= per_message
    for name in dimensions:
        assert name in emitted.attribute_names, f"{name} is not on any span"
        assert name not in per_message, f"{name} has a value per message"
        # a handful: the demo's kinds of error (a WhatsApp receipt's code among them)
        assert len(set(map(str, emitted.values(name)))) <= 16, name
    assert int(_default(connector["aggregation_cardinality_limit"])) > 0


# -- docker-compose and the files it mounts ---------------------------------------------------


def _host_port(url: str) -> tuple[str, int]:
    m = re.fullmatch(r"(?:[a-z]+://)?([\w.-]+):(\d+)/?", url)
    assert m, url
    return m.group(1), int(m.group(2))


def test_compose_services_are_pinned_and_mount_files_that_exist(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"otel-collector", "jaeger", "tempo", "prometheus", "grafana"} <= set(services)
    assert services["jaeger"]["image"].startswith("jaegertracing/jaeger:2.")
    for name, service in services.items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), name
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (CONFIG_DIR / source).exists(), (name, source)


def test_the_collector_runs_this_config_and_publishes_the_otlp_ports(
    compose: dict[str, Any], config: dict[str, Any]
) -> None:
    collector = compose["services"]["otel-collector"]
    (config_arg,) = [a for a in collector["command"] if a.startswith("--config=")]
    target = config_arg.removeprefix("--config=")
    assert f"./otelcol.yaml:{target}:ro" in collector["volumes"]
    published = {p.split(":")[-1] for p in collector["ports"]}
    protocols = config["receivers"]["otlp"]["protocols"]
    for proto in ("grpc", "http"):
        assert _default(protocols[proto]["endpoint"]).rsplit(":", 1)[1] in published
    health_port = _default(config["extensions"]["health_check"]["endpoint"]).rsplit(":", 1)[1]
    assert health_port in published


def test_the_collector_exports_to_the_compose_services_on_their_otlp_ports(
    compose: dict[str, Any], config: dict[str, Any]
) -> None:
    tempo = _load("tempo.yaml")
    tempo_grpc = tempo["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    listening = {"tempo": _host_port(tempo_grpc)[1], "jaeger": 4317}  # Jaeger v2's OTLP default
    environment = compose["services"]["otel-collector"]["environment"]
    for backend in ("jaeger", "tempo"):
        exporter = config["exporters"][f"otlp_grpc/{backend}"]
        for endpoint in (_default(exporter["endpoint"]),
                         environment[_ENV_REF.fullmatch(exporter["endpoint"]).group(1)]):  # type: ignore[union-attr]
            host, port = _host_port(endpoint)
            assert host == backend and host in compose["services"]
            assert port == listening[backend]


def test_tempo_listens_everywhere_and_covers_seven_days() -> None:
    tempo = _load("tempo.yaml")
    for proto in ("grpc", "http"):
        endpoint = tempo["distributor"]["receivers"]["otlp"]["protocols"][proto]["endpoint"]
        assert _host_port(endpoint)[0] == "0.0.0.0"
    week = 7 * 24 * 3600
    assert _seconds(tempo["compactor"]["compaction"]["block_retention"]) >= week
    assert _seconds(tempo["query_frontend"]["search"]["max_duration"]) >= week
    assert _seconds(tempo["query_frontend"]["metrics"]["max_duration"]) >= week
    # Our spans are not SERVER spans; TraceQL metrics must not filter them out.
    assert tempo["metrics_generator"]["processor"]["local_blocks"]["filter_server_spans"] is False
    assert "local-blocks" in tempo["overrides"]["defaults"]["metrics_generator"]["processors"]


def test_prometheus_scrapes_the_ports_the_collector_serves(
    compose: dict[str, Any], config: dict[str, Any]
) -> None:
    prometheus = _load("prometheus.yaml")
    targets = {
        t for job in prometheus["scrape_configs"] for sc in job["static_configs"]
        for t in sc["targets"]
    }
    metrics_port = _host_port(_default(config["exporters"]["prometheus"]["endpoint"]))[1]
    reader = config["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]
    assert targets == {f"otel-collector:{metrics_port}",
                       f"otel-collector:{_default(reader['prometheus']['port'])}"}
    mounted = compose["services"]["prometheus"]["volumes"][0].split(":")[1]
    assert f"--config.file={mounted}" in compose["services"]["prometheus"]["command"]


def test_grafana_datasources_point_at_the_compose_services() -> None:
    datasources = _load("grafana/provisioning/datasources/datasources.yaml")["datasources"]
    tempo_port = _load("tempo.yaml")["server"]["http_listen_port"]
    urls = {d["uid"]: d["url"] for d in datasources}
    assert urls == {
        "prometheus": "http://prometheus:9090",
        "tempo": f"http://tempo:{tempo_port}",
        "jaeger": "http://jaeger:16686",
    }


def test_compose_validates_with_docker_compose_when_available() -> None:
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        probe = subprocess.run([*command, "version"], capture_output=True, text=True, timeout=30)
        if probe.returncode != 0:
            continue
        result = subprocess.run(
            [*command, "-f", str(CONFIG_DIR / "docker-compose.yaml"), "config", "-q"],
            capture_output=True, text=True, timeout=60, cwd=CONFIG_DIR,
        )
        assert result.returncode == 0, result.stderr
        return
    pytest.skip("neither 'docker compose' nor 'docker-compose' is installed")


# -- the dashboard and the README's queries ---------------------------------------------------

_PROM_METRIC = re.compile(r"\b([a-zA-Z_:][\w:]*)\s*\{")
_PROM_MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"")
_PROM_BY = re.compile(r"\bby\s*\(([^)]*)\)")


def _check_promql(expr: str, config: dict[str, Any]) -> None:
    metrics = set(_PROM_METRIC.findall(expr))
    assert metrics, expr
    assert metrics <= _metric_names(config), (expr, metrics - _metric_names(config))
    labels = set(_PROM_MATCHER.findall(expr))
    for group in _PROM_BY.findall(expr):
        labels |= {label.strip() for label in group.split(",") if label.strip()}
    assert labels <= _metric_labels(config), (expr, labels - _metric_labels(config))


_TRACEQL_ATTRIBUTE = re.compile(r"\bspan\.([a-zA-Z_][\w.]*)")


def _check_traceql(query: str, emitted: Emitted) -> None:
    names = set(_TRACEQL_ATTRIBUTE.findall(query))
    assert names, query
    assert names <= emitted.attribute_names, (query, names - emitted.attribute_names)
    for key, value in re.findall(r'span\.([\w.]+)\s*=\s*"([^"]*)"', query):
        known = set(map(str, emitted.values(key)))
        if len(known) <= 10:  # an enumeration (kind, outcome, channel): the value must exist
            assert value in known, (key, value)


def test_the_dashboard_charts_only_metrics_and_labels_the_collector_produces(
    config: dict[str, Any], emitted: Emitted
) -> None:
    dashboard = json.loads(
        (CONFIG_DIR / "grafana/dashboards/otel-delivery.json").read_text(encoding="utf-8")
    )
    datasources = {d["uid"] for d in
                   _load("grafana/provisioning/datasources/datasources.yaml")["datasources"]}
    titles = " / ".join(p["title"].lower() for p in dashboard["panels"])
    for needle in ("per minute", "failure rate", "error types", "p95", "failed"):
        assert needle in titles
    prom = tempo = 0
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            assert target["datasource"]["uid"] in datasources
            if target["datasource"]["uid"] == "prometheus":
                _check_promql(target["expr"], config)
                prom += 1
            else:
                _check_traceql(target["query"], emitted)
                tempo += 1
    assert prom >= 5 and tempo >= 1


def _fenced(readme: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", readme, re.MULTILINE | re.DOTALL)


def test_the_readme_queries_use_attributes_our_spans_carry(
    readme: str, config: dict[str, Any], emitted: Emitted
) -> None:
    traceql, jaeger, promql = (_fenced(readme, x) for x in ("traceql", "jaeger", "promql"))
    assert len(traceql) >= 8 and len(jaeger) >= 5 and len(promql) >= 4
    for query in traceql:
        _check_traceql(query, emitted)
    for tags in jaeger:
        for pair in tags.split():
            key, _, value = pair.partition("=")
            assert key in emitted.attribute_names, key
            known = {str(v).lower() for v in emitted.values(key)}
            if len(known) <= 10:
                assert value in known, pair
    for expr in promql:
        _check_promql(expr, config)


def test_the_readme_says_where_crash_evidence_lives(readme: str) -> None:
    section = readme.split("**Crashes never reach the collector.**", 1)[1].split("\n## ", 1)[0]
    assert "SIGKILL" in section and "otel-delivery interrupted" in section
    assert "otel_delivery.outcome = interrupted" in section
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in readme
