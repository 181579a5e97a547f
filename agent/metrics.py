"""Prometheus metrics of the agent, in an injected registry (tests stay isolated).

Counters and histograms are updated by the apply path; per-disk state is read
at scrape time through a collector, so a gauge never lags the truth.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from protocol.documents import DiskState
from protocol.wire import PROTOCOL_VERSION

DISK_STATES = tuple(DiskState)

# Gaps the agent detects between what it acknowledged and what a target holds, each of which
# makes the disk `resync_required` (the `reason` label of mtagent_resync_required_total):
# a failed batch whose rollback could not read its undo records back; a batch cut off by a crash
# that start-up could not roll back, for the same cause; a journal that committed batches the
# state store does not know (state.db restored from an old backup, or lost).
ROLLBACK_FAILED = "rollback_failed"
CRASH_RECOVERY_FAILED = "crash_recovery_failed"
STATE_BEHIND_JOURNAL = "state_behind_journal"
GAP_CAUSES = (ROLLBACK_FAILED, CRASH_RECOVERY_FAILED, STATE_BEHIND_JOURNAL)

# Batches take from a millisecond (64 KiB) to tens of seconds (256 MiB on a slow disk).
APPLY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# Why a TLS handshake failed (agent.server.tls_handshakes tells them apart): label values.
NO_CLIENT_CERTIFICATE = "no_client_certificate"  # the sender presented none
CLIENT_CERTIFICATE_REJECTED = "client_certificate_rejected"  # not from our CA, expired...
REJECTED_BY_CLIENT = "rejected_by_client"  # the sender refused ours (an alert)
PROTOCOL = "protocol"  # not TLS, too old a version, no shared cipher
HANDSHAKE_FAILURE_REASONS = (
    NO_CLIENT_CERTIFICATE,
    CLIENT_CERTIFICATE_REJECTED,
    REJECTED_BY_CLIENT,
    PROTOCOL,
)


@dataclass(frozen=True, slots=True)
class DiskSnapshot:
    """What the collector needs to know of one disk at scrape time."""

    disk: str
    group: str
    state: DiskState
    last_seq: int
    last_source_time_ns: int
    size_bytes: int
    # Gaps detected since the agent started, by cause (GAP_CAUSES).
    gaps: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FailoverSnapshot:
    """The latest failover of one group (agent.recovery.failover), at scrape time. `phase`: its
    phase (agent.replication.state.FailoverPhase); `in_progress`: not yet released (nor ended);
    `point_age_seconds`: how old the chosen point was when it was chosen (None before)."""

    group: str
    phase: str
    in_progress: bool
    point_age_seconds: float | None


class AgentMetrics:
    """The agent's metric families, registered in `registry`."""

    def __init__(self, registry: CollectorRegistry, *, version: str = "unknown") -> None:
        self.registry = registry
        build = Info("mtagent_build", "The running agent.", registry=registry)
        build.info(
            {
                "version": version,
                "protocol": str(PROTOCOL_VERSION),
                "python": platform.python_version(),
            }
        )
        # The default registry's process and platform metrics (RSS, open fds, CPU
        # seconds, python_info), which an injected registry does not get by itself.
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        self.received_bytes = Counter(
            "mtagent_received_bytes",
            "Batch body bytes received from senders.",
            ["disk"],
            registry=registry,
        )
        self.applied_bytes = Counter(
            "mtagent_applied_bytes",
            "Disk bytes (DATA and ZERO extents) of acknowledged batches.",
            ["disk"],
            registry=registry,
        )
        self.batches = Counter(
            "mtagent_batches", "Batches acknowledged durable.", ["disk"], registry=registry
        )
        self.rejected = Counter(
            "mtagent_rejected_batches",
            "Batches refused, by error code.",
            ["disk", "code"],
            registry=registry,
        )
        self.checksum_failures = Counter(
            "mtagent_checksum_failures",
            "Frames whose header or payload digest did not match.",
            ["disk"],
            registry=registry,
        )
        self.rollbacks = Counter(
            "mtagent_rollbacks",
            "Batches rolled back from their undo records (failed or cut off).",
            ["disk"],
            registry=registry,
        )
        self.apply_seconds = Histogram(
            "mtagent_batch_apply_seconds",
            "Time from the first byte of a batch to its acknowledgement.",
            ["disk"],
            buckets=APPLY_BUCKETS,
            registry=registry,
        )
        self.tls_handshake_failures = Counter(
            "mtagent_tls_handshake_failures",
            "TLS handshakes on the data port that failed, by reason.",
            ["reason"],
            registry=registry,
        )
        for reason in HANDSHAKE_FAILURE_REASONS:
            # Present from the start, so that rate() and increase() see the first failure.
            self.tls_handshake_failures.labels(reason)
        self.retention_window_target = Gauge(
            "mtagent_retention_window_target_seconds",
            "The configured retention window (retention.window): how far back recovery "
            "points should reach.",
            registry=registry,
        )
        self.retention_max = Gauge(
            "mtagent_retention_max_bytes",
            "The configured most undo data kept (retention.max_bytes).",
            registry=registry,
        )

    def declare_configuration(
        self, disks: Iterable[str], *, retention_window_seconds: float, retention_max_bytes: int
    ) -> None:
        """Publish the configured targets, and every disk's counters at zero.

        A counter that appears only at its first increment hides that increment from
        rate() and increase(): an alert on checksum failures would miss the first one.
        """
        for disk in disks:
            for counter in (
                self.received_bytes,
                self.applied_bytes,
                self.batches,
                self.checksum_failures,
                self.rollbacks,
            ):
                counter.labels(disk)
        self.retention_window_target.set(retention_window_seconds)
        self.retention_max.set(retention_max_bytes)

    def declare_certificates(self, not_after: Mapping[str, float]) -> None:
        """When the agent's certificates expire (Unix seconds), by role: "server" (what the
        agent presents) and "client_ca" (what every sender's certificate chains to)."""
        gauge = Gauge(
            "mtagent_certificate_expiry_timestamp_seconds",
            "When the agent's server certificate and its client CA expire (Unix time).",
            ["certificate"],
            registry=self.registry,
        )
        for role, timestamp in not_after.items():
            gauge.labels(role).set(timestamp)

    def count_handshake_failure(self, reason: str) -> None:
        """One more failed TLS handshake (see agent.server.tls_handshakes)."""
        self.tls_handshake_failures.labels(reason).inc()

    def watch_disks(self, snapshots: Callable[[], Iterable[DiskSnapshot]]) -> None:
        """Report per-disk state, read from `snapshots()` at every scrape."""
        self.registry.register(DiskCollector(snapshots))

    def watch_memory_budget(
        self, budget_bytes: int, held: Callable[[], int], waiting: Callable[[], int]
    ) -> None:
        """Report the memory budget and, at every scrape, `held()` bytes and `waiting()` batches."""
        self.registry.register(MemoryBudgetCollector(budget_bytes, held, waiting))

    def watch_failovers(
        self, snapshots: Callable[[], Iterable[FailoverSnapshot]], phases: Iterable[str]
    ) -> None:
        """Report the groups' failovers, read from `snapshots()` at every scrape; every phase of
        `phases` is reported for each group (0 or 1), so that an alert sees a phase appear."""
        self.registry.register(FailoverCollector(snapshots, tuple(phases)))

    def watch_connections(self, count: Callable[[], int]) -> None:
        """Report `count()`, the open connections of the data port, at every scrape."""
        self.registry.register(ConnectionCollector(count))


class MemoryBudgetCollector(Collector):
    """The memory budget of batches in flight (agent.replication.memory_budget), at scrape time."""

    def __init__(self, budget_bytes: int, held: Callable[[], int], waiting: Callable[[], int]):
        self._budget_bytes, self._held, self._waiting = budget_bytes, held, waiting

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "mtagent_memory_budget_bytes",
            "What batches in flight may hold together (server.memory_budget).",
            value=self._budget_bytes,
        )
        yield GaugeMetricFamily(
            "mtagent_memory_held_bytes",
            "Memory of the budget that batches in flight hold now, in whole slots.",
            value=self._held(),
        )
        yield GaugeMetricFamily(
            "mtagent_memory_waiting_batches",
            "Batches waiting for memory of the budget (their connections are not read).",
            value=self._waiting(),
        )


class ConnectionCollector(Collector):
    """The data port's open connections (past the TLS handshake), at scrape time."""

    def __init__(self, count: Callable[[], int]) -> None:
        self._count = count

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "mtagent_open_connections",
            "Connections to the data port past their TLS handshake.",
            value=self._count(),
        )


class DiskCollector(Collector):
    """Per-disk gauges computed at scrape time."""

    def __init__(
        self,
        snapshots: Callable[[], Iterable[DiskSnapshot]],
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._snapshots = snapshots
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        info = InfoMetricFamily("mtagent_disk", "Configured replication target.", labels=["disk"])
        last_seq = GaugeMetricFamily(
            "mtagent_disk_last_seq",
            "Sequence number of the last acknowledged batch.",
            labels=["disk"],
        )
        rpo = GaugeMetricFamily(
            "mtagent_disk_rpo_seconds",
            "Now minus the source time of the last acknowledged batch (NaN before the first).",
            labels=["disk"],
        )
        size = GaugeMetricFamily("mtagent_disk_size_bytes", "Target size.", labels=["disk"])
        state = GaugeMetricFamily(
            "mtagent_disk_state", "1 for the disk's current state.", labels=["disk", "state"]
        )
        disks = GaugeMetricFamily(
            "mtagent_disks", "Configured disks in each state.", labels=["state"]
        )
        gaps = CounterMetricFamily(
            "mtagent_resync_required",
            "Gaps detected between what the agent acknowledged and what the target holds, each "
            "of which made the disk resync_required, by cause.",
            labels=["disk", "reason"],
        )
        now = self._clock()
        snapshots = list(self._snapshots())
        # Every state is present, zero or not, so that an alert on a state sees it appear.
        counts = dict.fromkeys(DISK_STATES, 0)
        for snap in snapshots:
            counts[snap.state] = counts.get(snap.state, 0) + 1
        for name, count in counts.items():
            disks.add_metric([name], count)
        for snap in snapshots:
            info.add_metric([snap.disk], {"group": snap.group})
            last_seq.add_metric([snap.disk], snap.last_seq)
            # A failed-over disk is not behind: it left replication on purpose (the RPO alert
            # compares with a number, and NaN never fires).
            lag = (
                (now - snap.last_source_time_ns) / 1e9
                if snap.last_source_time_ns and snap.state != DiskState.FAILED_OVER
                else float("nan")
            )
            rpo.add_metric([snap.disk], lag)
            size.add_metric([snap.disk], snap.size_bytes)
            for name in DISK_STATES:
                state.add_metric([snap.disk, name], 1.0 if name == snap.state else 0.0)
            # Every cause from zero, so that increase() sees the first gap.
            for cause in GAP_CAUSES:
                gaps.add_metric([snap.disk, cause], snap.gaps.get(cause, 0))
        yield from (info, last_seq, rpo, size, state, disks, gaps)


class FailoverCollector(Collector):
    """Per-group failover gauges computed at scrape time."""

    def __init__(
        self, snapshots: Callable[[], Iterable[FailoverSnapshot]], phases: tuple[str, ...]
    ) -> None:
        self._snapshots = snapshots
        self._phases = phases

    def collect(self) -> Iterator[Metric]:
        in_progress = GaugeMetricFamily(
            "mtagent_failover_in_progress",
            "1 while a failover of the group is under way (requested, not yet released).",
            labels=["group"],
        )
        phase = GaugeMetricFamily(
            "mtagent_failover_phase",
            "1 for the phase of the group's latest failover since the agent started.",
            labels=["group", "phase"],
        )
        age = GaugeMetricFamily(
            "mtagent_failover_point_age_seconds",
            "How old the failover's point was when it was chosen (NaN before).",
            labels=["group"],
        )
        for snap in self._snapshots():
            in_progress.add_metric([snap.group], 1.0 if snap.in_progress else 0.0)
            for name in self._phases:
                phase.add_metric([snap.group, name], 1.0 if name == snap.phase else 0.0)
            seconds = snap.point_age_seconds
            age.add_metric([snap.group], float("nan") if seconds is None else seconds)
        yield from (in_progress, phase, age)
