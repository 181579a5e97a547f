"""`mtagent push`: the sender. Sends a source image to a target disk of an agent.

`--mode full` is the initial replication (every byte, flagged resync); `--mode delta`
sends what changed since `--base`. See `agent.sender.push.push_image` for the guarantees.
`--mode resync` sends only the chunks whose digests differ on the target, and `--mode
verify` compares the same way without writing (`agent.sender.resync`, `agent.sender.verify`);
its exit code says the outcome: 0 identical, 1 different, 2 usage, 3 could not compare.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import io
import os
import ssl
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TextIO, TypeVar

from agent.commands.json_output import print_json
from agent.commands.progress import ProgressBar
from agent.errors import AgentError, CommandFailed
from agent.sender import compare, resync, verify
from agent.sender import push as sender
from agent.sender.compare import CompareProgress
from agent.sender.push import PushResult, push_image
from agent.sender.resync import ResyncResult
from agent.sender.verify import VerifyResult
from agent.units import InvalidValue, human_bytes, parse_size
from blockio.scan.chunk_digests import chunk_bytes_problem
from protocol.client import AgentClient, client_ssl_context
from protocol.events import Tag
from protocol.wire import TAG_KINDS

_TAG_OPTIONS = ("tag", "tag_kind", "tag_group", "tag_id")
MODES = sender.MODES + compare.MODES
_ERASE_LINE = "\r\x1b[2K"
_COMPARING = frozenset(compare.MODES)
T = TypeVar("T")
EXIT_DIFFERENT = 1
EXIT_CANNOT_COMPARE = 3


class CannotCompare(AgentError):
    """`push --mode verify` could not compare (the agent unreachable or refusing, the source or
    the TLS files unreadable): exit 3, so that a script never takes it for "different" (1)."""

    exit_code = EXIT_CANNOT_COMPARE


def size_argument(text: str) -> int:
    """A positive size in the units grammar (`4096`, `512KiB`, `1M`, `10GB`). For argparse."""
    try:
        size = parse_size(text)
    except InvalidValue as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size ({exc.expected})") from exc
    if size <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the size must be positive")
    return size


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "push",
        help="send a source image to a target disk (full, delta, resync) or verify it",
        description="Send a source image to a target disk of an agent over mutual TLS: all "
        "of it (--mode full, the initial replication), the 64 KiB blocks that differ from "
        "--base (--mode delta), or the chunks whose digests differ on the target (--mode "
        "resync, for a target that holds an older copy; a resync cut off resumes where it "
        "was). --mode verify compares by digests, writes nothing, lists the differing "
        "chunks and exits 0 when identical, 1 when they differ, 3 when it could not compare "
        "(agent unreachable, source unreadable). Batches are numbered after the disk's last "
        "acknowledged one; failures are retried with backoff and the push resumes where "
        "the agent is.",
    )
    parser.add_argument("--server", required=True, metavar="URL", help="https://host:port")
    parser.add_argument("--cert", required=True, type=Path, help="client certificate (PEM)")
    parser.add_argument("--key", required=True, type=Path, help="client private key (PEM)")
    parser.add_argument("--ca", required=True, type=Path, help="CA of the agent's certificate")
    parser.add_argument("--disk", required=True, metavar="ID", help="target disk id")
    parser.add_argument("--source", required=True, type=Path, metavar="IMG", help="source image")
    parser.add_argument(
        "--mode",
        choices=MODES,
        required=True,
        help="no default: full and resync write over the target and drop its older recovery points",
    )
    parser.add_argument(
        "--chunk-bytes",
        type=size_argument,
        metavar="SIZE",
        help="resync, verify: the comparison's chunk, a power of two from 64KiB to 16MiB "
        "(default 64KiB)",
    )
    parser.add_argument(
        "--base", type=Path, metavar="OLD_IMG", help="delta: the image the target already holds"
    )
    parser.add_argument(
        "--frame-bytes",
        type=size_argument,
        default=1 << 20,
        metavar="SIZE",
        help="largest DATA frame (default 1MiB)",
    )
    parser.add_argument(
        "--batch-bytes",
        type=size_argument,
        default=64 << 20,
        metavar="SIZE",
        help="disk bytes per batch (default 64MiB)",
    )
    parser.add_argument(
        "--no-compress", action="store_true", help="never LZ4-compress frames (fast links)"
    )
    parser.add_argument(
        "--retries",
        type=_count,
        default=8,
        metavar="N",
        help="failures in a row before giving up (default 8)",
    )
    tag = parser.add_argument_group(
        "recovery point", "mark the end of the push as a consistent point (all four, or none)"
    )
    tag.add_argument("--tag", metavar="NAME", help="the point's name")
    tag.add_argument("--tag-kind", choices=sorted(TAG_KINDS), help="app or crash consistent")
    tag.add_argument("--tag-group", metavar="G", help="consistency group")
    tag.add_argument("--tag-id", metavar="ID", help="the point's id, shared by the group's disks")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(run=functools.partial(run, parser))


def usage_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the combination of options, or None."""
    if not args.server.startswith("https://"):
        return f"--server must be an https:// URL, got {args.server!r}"
    if args.mode == "delta" and args.base is None:
        return "--mode delta needs --base OLD_IMG"
    if args.mode != "delta" and args.base is not None:
        return "--base is only for --mode delta"
    if args.chunk_bytes is not None:
        if args.mode not in _COMPARING:
            return "--chunk-bytes is only for --mode resync and verify"
        problem = chunk_bytes_problem(args.chunk_bytes)
        if problem:
            return f"--chunk-bytes: {problem}"
    if args.mode == "resync" and args.batch_bytes < _chunk_bytes(args):
        return f"--batch-bytes must be at least the chunk size ({_chunk_bytes(args)})"
    given = [name for name in _TAG_OPTIONS if getattr(args, name) is not None]
    if given and args.mode in _COMPARING:
        return f"a tag is only for --mode full and delta, not {args.mode}"
    if given and len(given) != len(_TAG_OPTIONS):
        missing = [f"--{name.replace('_', '-')}" for name in _TAG_OPTIONS if name not in given]
        return f"a tag needs all of --tag, --tag-kind, --tag-group, --tag-id (missing {missing})"
    return None


def _chunk_bytes(args: argparse.Namespace) -> int:
    return compare.DEFAULT_CHUNK_BYTES if args.chunk_bytes is None else int(args.chunk_bytes)


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    problem = usage_problem(args)
    if problem:
        parser.error(problem)  # exits 2
    if args.mode in _COMPARING:
        return _run_comparison(args)
    try:
        source_time_ns = os.stat(args.source).st_mtime_ns
    except OSError as exc:
        raise CommandFailed(f"cannot read source {args.source}: {exc.strerror}") from exc
    tag = None
    if args.tag is not None:
        tag = Tag(args.tag_id, args.tag, args.tag_kind, args.tag_group, source_time_ns)
    context = _tls_context(args)
    progress = ProgressBar(sys.stderr, label=args.disk) if sys.stderr.isatty() else None
    result = _run_shown(_push(args, context, tag, progress), progress)
    if args.json:
        print_json(result.to_json(), indent=None)
    else:
        print(summary_line(result))
    return 0


def _tls_context(args: argparse.Namespace) -> ssl.SSLContext:
    for option, path in (("--cert", args.cert), ("--key", args.key), ("--ca", args.ca)):
        try:
            path.open("rb").close()
        except OSError as exc:
            raise CommandFailed(f"{option} {path}: {exc.strerror}") from exc
    try:
        return client_ssl_context(args.cert, args.key, args.ca)
    except OSError as exc:  # ssl.SSLError included
        raise CommandFailed(f"cannot load the TLS certificate, key or CA: {exc}") from exc


def _run_shown(work: Coroutine[Any, Any, T], display: ProgressBar | CompareBar | None) -> T:
    """Run `work`, closing its progress display whatever happens (a PushFailed is an AgentError:
    the CLI prints its one line)."""
    try:
        return asyncio.run(work)
    finally:
        if display is not None:
            display.close()


async def _push(
    args: argparse.Namespace,
    context: ssl.SSLContext,
    tag: Tag | None,
    progress: ProgressBar | None,
) -> PushResult:
    async with AgentClient(args.server, context) as client:
        return await push_image(
            client,
            args.disk,
            args.source,
            mode=args.mode,
            base=args.base,
            frame_bytes=args.frame_bytes,
            batch_bytes=args.batch_bytes,
            compress=not args.no_compress,
            tag=tag,
            retries=args.retries,
            progress=progress,
        )


def _run_comparison(args: argparse.Namespace) -> int:
    """`--mode resync`: 0 when done. `--mode verify`: 0 identical, 1 different; raises
    CannotCompare (exit 3) when it could not compare."""
    try:
        context = _tls_context(args)
        bar = CompareBar(sys.stderr, label=args.disk) if sys.stderr.isatty() else None
        result = _run_shown(_compare(args, context, bar), bar)
    except (AgentError, KeyboardInterrupt) as exc:
        if args.mode != "verify":
            raise
        # Cut off, a verify has compared nothing it could vouch for: never "different" (1).
        raise CannotCompare(str(exc) or "interrupted") from exc
    if args.json:
        print_json(result.to_json(), indent=None)
    elif isinstance(result, VerifyResult):
        print("\n".join(verify_lines(result)))
    else:
        print(resync_line(result))
    return EXIT_DIFFERENT if isinstance(result, VerifyResult) and not result.identical else 0


async def _compare(
    args: argparse.Namespace, context: ssl.SSLContext, bar: CompareBar | None
) -> ResyncResult | VerifyResult:
    async with AgentClient(args.server, context) as client:
        if args.mode == "verify":
            return await verify.verify_image(
                client,
                args.disk,
                args.source,
                chunk_bytes=_chunk_bytes(args),
                retries=args.retries,
                progress=bar,
            )
        return await resync.resync_image(
            client,
            args.disk,
            args.source,
            chunk_bytes=_chunk_bytes(args),
            frame_bytes=args.frame_bytes,
            batch_bytes=args.batch_bytes,
            compress=not args.no_compress,
            retries=args.retries,
            progress=bar,
        )


class CompareBar:
    """The progress of a resync or verify on a terminal: how far the comparison is, its
    rate and time left (ProgressBar), and the bytes sent so far."""

    def __init__(
        self, stream: TextIO, *, label: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._lines = _SuffixedStream(stream)
        self._bar = ProgressBar(self._lines, label=label, clock=clock)

    def __call__(self, progress: CompareProgress) -> None:
        self._lines.suffix = f"  sent {human_bytes(progress.sent_bytes)}"
        self._bar(progress.compared_bytes, progress.total_bytes)

    def close(self) -> None:
        self._bar.close()


class _SuffixedStream(io.TextIOBase):
    """A terminal stream that adds `suffix` to each line ProgressBar draws on it."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self._stream = stream
        self.suffix = ""

    def write(self, text: str) -> int:
        # ProgressBar writes each line whole, after the erase sequence, or that alone.
        line = text if text == _ERASE_LINE else text + self.suffix
        return self._stream.write(line)

    def flush(self) -> None:
        self._stream.flush()


def resync_line(result: ResyncResult) -> str:
    """One line for a person: what was compared, what differed, what was sent, how fast."""
    rate = result.compared_bytes / result.seconds / 1e6 if result.seconds > 0 else 0.0
    start = f" from offset {result.start_offset}" if result.start_offset else ""
    seqs = (
        f"seq {result.first_seq}"
        if result.batches == 1
        else f"seq {result.first_seq}-{result.last_seq}"
    )
    retries = f", {result.retries} retries" if result.retries else ""
    return (
        f"{result.disk}: resync compared {human_bytes(result.compared_bytes)}{start} in "
        f"{result.seconds:.1f} s ({rate:.1f} MB/s); {result.differing_chunks} chunks of "
        f"{human_bytes(result.chunk_bytes)} differed ({human_bytes(result.differing_bytes)}); "
        f"sent {human_bytes(result.data_bytes + result.zero_bytes)} in {result.batches} "
        f"batch{'es' if result.batches != 1 else ''} ({seqs}), "
        f"{human_bytes(result.wire_bytes)} on the wire{retries}"
    )


def verify_lines(result: VerifyResult) -> list[str]:
    """A summary line, then one line per differing range `[start, end) length`."""
    compared = f"{human_bytes(result.compared_bytes)} compared in {result.seconds:.1f} s"
    if result.identical:
        return [f"{result.disk}: verify: identical ({compared})"]
    longer = (
        f"{result.disk}: verify: the target is longer than the source by "
        f"{human_bytes(result.target_longer_bytes)} ({result.target_longer_bytes} bytes from "
        f"offset {result.compared_bytes}, which no source byte matches)"
    )
    if result.differing_chunks == 0:
        first = human_bytes(result.compared_bytes)
        return [f"{result.disk}: verify: the first {first} are identical ({compared})", longer]
    lines = [
        f"{result.disk}: verify: {result.differing_chunks} chunks of "
        f"{human_bytes(result.chunk_bytes)} differ ({human_bytes(result.differing_bytes)}) "
        f"in {len(result.ranges)}{'+' if result.ranges_truncated else ''} "
        f"range{'s' if len(result.ranges) != 1 else ''} ({compared})"
    ]
    lines += [
        f"  [{offset}, {offset + length})  {human_bytes(length)}"
        for offset, length in result.ranges
    ]
    if result.ranges_truncated:
        lines.append(f"  ... (only the first {len(result.ranges)} ranges are listed)")
    if result.target_longer_bytes:
        lines.append(longer)
    return lines


def summary_line(result: PushResult) -> str:
    """One line for a person: what was covered, what went on the wire, how fast."""
    if result.batches == 0:
        return f"{result.disk}: nothing to send ({result.mode}); last seq {result.last_seq}"
    seqs = (
        f"seq {result.first_seq}"
        if result.batches == 1
        else f"seq {result.first_seq}-{result.last_seq}"
    )
    rate = result.disk_bytes / result.seconds / 1e6 if result.seconds > 0 else 0.0
    retries = f", {result.retries} retries" if result.retries else ""
    return (
        f"{result.disk}: {result.mode} push of {human_bytes(result.disk_bytes)} in "
        f"{result.batches} batch{'es' if result.batches != 1 else ''} ({seqs}), "
        f"{human_bytes(result.wire_bytes)} on the wire, {result.seconds:.1f} s, "
        f"{rate:.1f} MB/s{retries}"
    )
