"""Prometheus metrics of the retention drive and the recovery points, in the app's registry.

Counters are kept by the retention task as it prunes and pauses; everything else is read at
scrape time by `RetentionCollector`, so a gauge never lags the journals.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from agent.config import AgentConfig
from agent.recovery.points import running_points
from agent.replication.replica import Replica
from agent.replication.retention_gate import RetentionGate
from agent.replication.state import StateStore
from blockio.journal.pruning import HIGH_WATER, MAX_BYTES, WINDOW
from protocol.documents import PointKind


class RetentionMetrics:
    """The counters of the retention task."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.pruned_bytes = Counter(
            "mtagent_retention_pruned_bytes",
            "Undo bytes deleted from the retention drive, by why: window (older than the "
            "retention window), max_bytes or high_water (the window shrank: on_full = shrink).",
            ["reason"],
            registry=registry,
        )
        self.pruned_segments = Counter(
            "mtagent_retention_pruned_segments",
            "Undo journal segments deleted, by why (as mtagent_retention_pruned_bytes_total).",
            ["reason"],
            registry=registry,
        )
        self.paused_seconds = Counter(
            "mtagent_retention_paused_seconds",
            "Time new batches were refused with 507 RETENTION_FULL (on_full = pause).",
            registry=registry,
        )
        for reason in (WINDOW, MAX_BYTES, HIGH_WATER):
            self.pruned_bytes.labels(reason)
            self.pruned_segments.labels(reason)


class RetentionCollector(Collector):
    """Retention and recovery-point gauges computed at scrape time."""

    def __init__(
        self,
        config: AgentConfig,
        replicas: Mapping[str, Replica],
        store: StateStore,
        gate: RetentionGate,
        full: Callable[[], str | None],
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._config = config
        self._replicas = replicas
        self._store = store
        self._gate = gate
        self._full = full
        self._clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        used = GaugeMetricFamily(
            "mtagent_retention_used_bytes",
            "Bytes of undo journal segments on the retention drive, per disk.",
            labels=["disk"],
        )
        damaged = GaugeMetricFamily(
            "mtagent_retention_damaged_segments",
            "Undo journal segments found damaged (points that need them are not listed).",
            labels=["disk"],
        )
        for disk, replica in self._replicas.items():
            journal = replica.journal
            summaries = () if journal is None else journal.summaries()
            used.add_metric([disk], sum(s.size_bytes for s in summaries))
            damaged.add_metric([disk], sum(1 for s in summaries if s.damage is not None))
        yield used
        yield damaged
        yield from self._drive()
        yield GaugeMetricFamily(
            "mtagent_retention_paused",
            "1 while new batches are refused with 507 RETENTION_FULL (on_full = pause).",
            value=1.0 if self._gate.paused is not None else 0.0,
        )
        yield GaugeMetricFamily(
            "mtagent_retention_full",
            "1 while the retention drive is above its high-water mark or the journals above "
            "max_bytes after pruning.",
            value=1.0 if self._full() is not None else 0.0,
        )
        yield from self._points()

    def _drive(self) -> Iterator[GaugeMetricFamily]:
        path: Path = self._config.retention.path
        try:
            stat = os.statvfs(path)
        except OSError:
            return
        yield GaugeMetricFamily(
            "mtagent_retention_free_bytes",
            "Bytes free for the agent on the retention file system.",
            value=stat.f_bavail * stat.f_frsize,
        )
        yield GaugeMetricFamily(
            "mtagent_retention_filesystem_size_bytes",
            "Size of the retention file system.",
            value=stat.f_blocks * stat.f_frsize,
        )

    def _points(self) -> Iterator[GaugeMetricFamily]:
        count = GaugeMetricFamily(
            "mtagent_recovery_points",
            "Recovery points listed, per consistency group and kind.",
            labels=["group", "kind"],
        )
        window = GaugeMetricFamily(
            "mtagent_retention_window_seconds",
            "Time from the oldest to the newest recovery point of each group: the window that "
            "can really be restored (it shrinks when on_full = shrink prunes early).",
            labels=["group"],
        )
        oldest = GaugeMetricFamily(
            "mtagent_recovery_point_oldest_age_seconds",
            "Now minus the time of each group's oldest recovery point (NaN without points).",
            labels=["group"],
        )
        now = self._clock()
        groups = sorted({disk.group for disk in self._config.disks})
        for group in groups:
            try:
                points = running_points(self._config, self._replicas, self._store, group)
            except sqlite3.Error:
                continue  # the state store is busy or failing: its own metrics say so
            for kind in PointKind:
                count.add_metric([group, kind], sum(1 for p in points if p.kind == kind))
            if points:
                times = [p.time_ns for p in points]
                window.add_metric([group], (max(times) - min(times)) / 1e9)
                oldest.add_metric([group], (now - min(times)) / 1e9)
            else:
                window.add_metric([group], 0.0)
                oldest.add_metric([group], float("nan"))
        yield from (count, window, oldest)
