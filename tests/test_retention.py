"""Retention by default: the store is pruned by age in the background, no cron needed."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

import otel_delivery
from local_store import RetentionKeeper, health, open_store
from otel_delivery import _configure

from .store_builder import StoreBuilder

DAY_MINUTES = 24 * 60


def _populate(path: Path) -> StoreBuilder:
    b = StoreBuilder(path, now_ms=time.time_ns() // 1_000_000)
    b.delivery("delivered_first", minutes_ago=40 * DAY_MINUTES)   # past 30 days: goes
    b.delivery("failed_final", minutes_ago=40 * DAY_MINUTES)      # a failure: kept to 90
    b.delivery("failed_final", minutes_ago=100 * DAY_MINUTES)     # past 90 days: goes
    b.delivery("delivered_first", minutes_ago=5)                  # recent: kept
    b.flush()
    return b


def _statuses(path: Path) -> list[tuple[str, int]]:
    db = open_store(path)
    try:
        now = time.time_ns() // 1_000_000
        return sorted(
            (r["status"], round((now - r["started_at_ms"]) / 86_400_000))
            for r in db.query("SELECT status, started_at_ms FROM attempts")
        )
    finally:
        db.close()


@pytest.mark.parametrize("in_child", [False, True])
def test_the_keeper_prunes_by_age_keeping_failures_longer(tmp_path: Path, in_child: bool) -> None:
    path = tmp_path / "d.db"
    _populate(path).close()
    keeper = RetentionKeeper(path)  # the defaults: 30 and 90 days
    # The thread prunes in a child process (fork safety); both give the same result.
    result = keeper.run_in_child() if in_child else keeper.run_once()
    assert result is not None and result.deleted["attempts"] == 1 + 2
    assert keeper.last_result == result and keeper.runs == 1
    assert _statuses(path) == [("delivered", 0), ("failed", 40), ("failed", 40)]


@pytest.mark.parametrize(
    ("delivered", "failed", "left"),
    [(None, None, 6), (30 * 86400.0, None, 5)],
)
def test_none_keeps_that_class_for_ever(
    tmp_path: Path, delivered: float | None, failed: float | None, left: int
) -> None:
    path = tmp_path / "d.db"
    _populate(path).close()
    keeper = RetentionKeeper(path, keep_delivered_for_seconds=delivered,
                             keep_failed_for_seconds=failed)
    if keeper.enabled:
        keeper.run_once()
    assert len(_statuses(path)) == left


def test_configure_starts_retention_and_shutdown_stops_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_configure, "_retention_interval_seconds", 0.2)
    path = tmp_path / "d.db"
    _populate(path).close()
    otel = otel_delivery.configure(store=path)
    try:
        assert otel.retention is not None
        deadline = time.monotonic() + 20
        while otel.retention.runs == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert otel.retention.runs >= 1
    finally:
        otel.shutdown()
    assert len(_statuses(path)) == 3


@pytest.mark.parametrize(("delivered", "failed"), [(90 * 86400, 30 * 86400), (None, 86400)])
def test_failures_kept_shorter_than_deliveries_is_refused(
    tmp_path: Path, delivered: float | None, failed: float
) -> None:
    with pytest.raises(otel_delivery.ConfigError, match="keep_failed_for_seconds"):
        otel_delivery.configure(store=tmp_path / "d.db", keep_delivered_for_seconds=delivered,
                                keep_failed_for_seconds=failed)


def test_health_reports_the_store_size_and_its_oldest_row(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    _populate(path).close()
    db = open_store(path)
    try:
        report: Any = health(db, since_seconds=3600)
        assert report.store_bytes == path.stat().st_size or report.store_bytes > 0
        assert 99 <= report.oldest_attempt_age_seconds / 86400 <= 101
        assert "oldest attempt 100.0 days old" in report.headline()
    finally:
        db.close()
