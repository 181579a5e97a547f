"""`POST /v1/disks/{disk}/hashes` (docs/protocol.md section 5) and the resync metrics.

The endpoint streams the XXH3-128 digest of each chunk of a range of the target, as
they are computed: a sender compares them with its source's (agent/sender/compare.py) while
the agent is still reading.

Where the reading runs: on threads of the request's own, not on the disk's I/O thread (a
pass over a large disk takes minutes, and batches must not queue behind it), through
read-only descriptors of its own (the replica may close its target after an I/O error while
the stream runs, and a closed descriptor number can be reused by another file), in windows of
whole chunks (blockio/scan/chunk_digests.py). While `[server] hash_read_bytes` lasts (shared by
all requests, `ReadWindows`), a request reads SCAN_READERS windows of SCAN_WINDOW_BYTES at
once with O_DIRECT, the fastest way through a disk; beyond it, one window of
DEFAULT_WINDOW_BYTES through the page cache. Memory per request is its windows and at most two
windows of digests waiting for the socket, whatever the range.

Why no digest describes data that a rollback takes back: a window is read without the disk's
lock, and kept only if no batch wrote into it meanwhile (agent/replication/inflight_writes.py: the
apply path reports each group of writes before the I/O thread can write it, and the end of each
batch). Otherwise it is read again holding the lock, which a batch holds from its first byte to
its commit or rollback, so the second reading sees committed content; it reads in windows of
DEFAULT_WINDOW_BYTES, taking the lock for each, so that batches wait milliseconds, not the time
of a large window. The case that matters: a resync cut off mid-batch is resumed at once while
the agent is still rolling back the cut-off batch, whose data is the source's; a digest of that
data matches the source, the resync skips the chunk, and the rollback then puts the old data
back behind its back. Batches that write elsewhere (a resync's batches write behind the windows
being read) cost the stream nothing, and the stream costs batches nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from agent.log_fields import log_fields
from agent.replication.replica import Replica
from agent.server import keys
from blockio.disks.target import TargetDisk
from blockio.scan.chunk_digests import (
    DEFAULT_WINDOW_BYTES,
    DIGEST_BYTES,
    SCAN_READERS,
    SCAN_WINDOW_BYTES,
    WindowReaders,
    chunk_bytes_problem,
    chunk_count,
    windows,
)
from protocol.documents import DiskState
from protocol.errors import BadRequest, OutOfRange, ProtocolError, TargetUnavailable, UnknownDisk

log = logging.getLogger(__name__)

DIGESTS_CONTENT_TYPE = "application/octet-stream"
_FIELDS = ("offset", "length", "chunk_bytes")


@dataclass(frozen=True, slots=True)
class HashRequest:
    """The body of a hashes request: digests of `[offset, offset + length)` in chunks."""

    offset: int
    length: int
    chunk_bytes: int


def parse_hash_request(body: bytes) -> HashRequest:
    """The request in `body`: a JSON object with exactly the integers `offset`, `length`
    and `chunk_bytes` (a power of two from 64 KiB to 16 MiB; `offset` a multiple of it,
    `length` not negative).

    Raises BadRequest naming the field at fault.
    """
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"the body must be a JSON object {list(_FIELDS)}: {exc}") from None
    if not isinstance(obj, dict) or set(obj) != set(_FIELDS):
        got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise BadRequest(f"the body must be a JSON object with exactly {list(_FIELDS)}, got {got}")
    for key in _FIELDS:
        if type(obj[key]) is not int:
            raise BadRequest(f"{key} must be an integer, got {type(obj[key]).__name__}", field=key)
    request = HashRequest(obj["offset"], obj["length"], obj["chunk_bytes"])
    problem = chunk_bytes_problem(request.chunk_bytes)
    if problem:
        raise BadRequest(problem, field="chunk_bytes")
    if request.offset < 0 or request.offset % request.chunk_bytes:
        raise BadRequest(
            f"offset {request.offset} is not a multiple of chunk_bytes {request.chunk_bytes}",
            field="offset",
        )
    if request.length < 0:
        raise BadRequest(f"length {request.length} is negative", field="length")
    return request


def check_inside(request: HashRequest, disk_bytes: int) -> None:
    """Raises OutOfRange (416) unless the request's range lies inside a disk of `disk_bytes`."""
    end = request.offset + request.length
    if end > disk_bytes:
        raise OutOfRange(
            f"range [{request.offset}, {end}) runs past the end of the disk ({disk_bytes} bytes)",
            offset=request.offset,
            length=request.length,
            disk_bytes=disk_bytes,
        )


@dataclass(frozen=True, slots=True)
class WindowGrant:
    """How one hash request reads: `readers` windows of `window_bytes`, direct or not."""

    window_bytes: int
    readers: int
    direct: bool

    @property
    def counted_bytes(self) -> int:
        """What it takes from `ReadWindows`: its windows if large, else nothing."""
        return self.window_bytes * self.readers if self.direct else 0


@dataclass
class ReadWindows:
    """The memory that hash requests read the target into, shared by all of them."""

    total_bytes: int
    taken_bytes: int = field(default=0, init=False)

    def take(self, chunk_bytes: int) -> WindowGrant:
        """How a new request reads: SCAN_READERS large windows with O_DIRECT while
        `total_bytes` has room for them, else one small window through the page cache (not
        counted: a request always gets one). Give it back with `give_back`."""
        large = WindowGrant(max(SCAN_WINDOW_BYTES, chunk_bytes), SCAN_READERS, direct=True)
        if self.taken_bytes + large.counted_bytes <= self.total_bytes:
            self.taken_bytes += large.counted_bytes
            return large
        return WindowGrant(max(DEFAULT_WINDOW_BYTES, chunk_bytes), 1, direct=False)

    def give_back(self, grant: WindowGrant) -> None:
        """Return what `take` gave."""
        self.taken_bytes -= grant.counted_bytes


def add_routes(app: web.Application) -> None:
    """Serve the hashes endpoint on `app`, and report resync metrics in its registry."""
    app[READ_WINDOWS] = ReadWindows(app[keys.CONFIG].server.hash_read_bytes)
    app[RESYNC_METRICS] = ResyncMetrics(
        app[keys.REGISTRY], lambda: app[keys.REPLICAS].values() if keys.REPLICAS in app else ()
    )
    app.router.add_post("/v1/disks/{disk}/hashes", post_hashes)


async def post_hashes(request: web.Request) -> web.StreamResponse:
    """The handler: errors before the first byte are JSON (via the error middleware); a
    failure once digests flow closes the connection short of its Content-Length, which
    the client sees as a cut stream."""
    disk = request.match_info["disk"]
    replica = request.app[keys.REPLICAS].get(disk)
    if replica is None:
        raise UnknownDisk(f"no disk {disk!r} is configured on this agent", disk=disk)
    wanted = parse_hash_request(await request.read())
    replica.refuse_if_failed_over()
    target = replica.target
    if target is None:
        async with replica.lock:  # opening runs on the disk's I/O thread, between batches
            replica.refuse_if_failed_over()
            target = await replica.ensure_open()
    check_inside(wanted, target.size_bytes)
    read_windows = request.app[READ_WINDOWS]
    grant = read_windows.take(wanted.chunk_bytes)
    try:
        readers = await asyncio.to_thread(
            WindowReaders.open,
            target.path,
            window_bytes=grant.window_bytes,
            count=grant.readers,
            direct=grant.direct,
            name=f"hashes-{disk}",
        )
    except OSError as exc:
        read_windows.give_back(grant)
        raise TargetUnavailable(f"disk {disk}: cannot open {target.path}: {exc}") from exc
    try:
        response = web.StreamResponse(headers={"Content-Type": DIGESTS_CONTENT_TYPE})
        response.content_length = chunk_count(wanted.length, wanted.chunk_bytes) * DIGEST_BYTES
        await response.prepare(request)
        stream = _DigestStream(replica, target, readers, wanted)
        compared = request.app[RESYNC_METRICS].compared_bytes.labels(disk)
        try:
            async for window, digests in stream:
                await response.write(digests)
                compared.inc(len(window))
        except ProtocolError as exc:
            # The status line is gone: all that is left to say is to stop short.
            log.warning("disk %s: hash stream stopped: %s", disk, exc, extra=log_fields(disk=disk))
            response.force_close()
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response
    finally:
        # After any read still running: the descriptors outlive their use.
        readers.close()
        read_windows.give_back(grant)


class _DigestStream:
    """The windows of one request, read ahead (one window per reader) by one task while the
    handler writes."""

    def __init__(
        self, replica: Replica, target: TargetDisk, readers: WindowReaders, wanted: HashRequest
    ) -> None:
        self._replica = replica
        self._target = target
        self._readers = readers
        self._wanted = wanted
        # Digests of two windows at most wait for the socket: memory stays bounded.
        self._ready: asyncio.Queue[tuple[range, bytes] | BaseException | None] = asyncio.Queue(2)

    async def __aiter__(self) -> AsyncIterator[tuple[range, bytes]]:
        producer = asyncio.create_task(self._produce())
        try:
            while (item := await self._ready.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            producer.cancel()
            await asyncio.gather(producer, return_exceptions=True)

    async def _produce(self) -> None:
        replica, wanted, readers = self._replica, self._wanted, self._readers
        todo = windows(wanted.offset, wanted.length, wanted.chunk_bytes, readers.window_bytes)
        # (window, the in-flight mark taken before its read began, its digests)
        ahead: deque[tuple[range, int, asyncio.Future[bytes]]] = deque()

        def read_ahead() -> None:
            while len(ahead) < readers.count:
                window = next(todo, None)
                if window is None:
                    return
                mark = replica.inflight.mark()
                digests = readers.digests(window, wanted.chunk_bytes)
                ahead.append((window, mark, asyncio.wrap_future(digests)))

        try:
            read_ahead()
            while ahead:
                window, mark, pending = ahead.popleft()
                digests = await pending
                self._check_target()
                read_ahead()
                if not replica.inflight.settled(mark, window.start, window.stop):
                    # A batch wrote here while we read: read again once it is committed or
                    # rolled back (it holds the lock until then).
                    digests = await self._settled_digests(window)
                await self._ready.put((window, digests))
            await self._ready.put(None)
        except asyncio.CancelledError:
            raise
        except ProtocolError as exc:
            await self._ready.put(exc)
        except Exception as exc:  # OSError, ImageChanged: the target failed under us
            await self._ready.put(
                TargetUnavailable(f"disk {replica.id}: reading the target failed: {exc}")
            )
        finally:
            for _, _, pending in ahead:
                pending.cancel()

    async def _settled_digests(self, window: range) -> bytes:
        """The digests of `window`, read in small pieces, each holding the disk's lock."""
        pieces = []
        chunk = self._wanted.chunk_bytes
        for piece in windows(window.start, len(window), chunk, DEFAULT_WINDOW_BYTES):
            async with self._replica.lock:
                pieces.append(await asyncio.wrap_future(self._readers.digests(piece, chunk)))
                self._check_target()
        return b"".join(pieces)

    def _check_target(self) -> None:
        """Raises TargetUnavailable if the replica closed its target (after an I/O error) or
        reopened it since the stream began: what was read may not be the target's."""
        replica = self._replica
        if replica.target is not self._target:
            raise TargetUnavailable(
                f"disk {replica.id}: the target was closed during the hash stream"
                f" ({replica.unavailable_reason or 'reopened'})"
            )


class ResyncMetrics:
    """Resync metrics: bytes compared (digested for senders) and, read at scrape time
    from each disk's committed progress, bytes sent and the progress ratio."""

    def __init__(
        self, registry: CollectorRegistry, replicas: Callable[[], Iterable[Replica]]
    ) -> None:
        self.compared_bytes = Counter(
            "mtagent_resync_compared_bytes",
            "Target bytes read and digested for senders comparing (resync and verify).",
            ["disk"],
            registry=registry,
        )
        registry.register(ResyncCollector(replicas))


class ResyncCollector(Collector):
    """Per-disk resync gauges, from the committed progress at scrape time."""

    def __init__(self, replicas: Callable[[], Iterable[Replica]]) -> None:
        self._replicas = replicas

    def collect(self) -> Iterator[GaugeMetricFamily]:
        ratio = GaugeMetricFamily(
            "mtagent_resync_progress_ratio",
            "Part of the disk a resync has made equal to its source: 1 when ok, 0 when a "
            "resync is required and has not started.",
            labels=["disk"],
        )
        sent = GaugeMetricFamily(
            "mtagent_resync_sent_bytes",
            "Disk bytes (DATA and ZERO) acknowledged in the current or last resync.",
            labels=["disk"],
        )
        for replica in self._replicas():
            progress = replica.progress
            sent.add_metric([replica.id], progress.resync.sent_bytes)
            if progress.state == DiskState.OK:
                ratio.add_metric([replica.id], 1.0)
            elif progress.state != DiskState.RESYNCING:
                ratio.add_metric([replica.id], 0.0)
            elif replica.target is not None and replica.target.size_bytes > 0:
                size = replica.target.size_bytes
                ratio.add_metric([replica.id], min(1.0, progress.resync.offset / size))
        yield from (ratio, sent)


RESYNC_METRICS = web.AppKey("resync_metrics", ResyncMetrics)
READ_WINDOWS = web.AppKey("read_windows", ReadWindows)
