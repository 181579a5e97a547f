#!/usr/bin/env python3
"""Disk images with realistic content for the demo and the benchmarks.

A real disk is neither all zeros nor all noise: unallocated space (zeros),
text and structured data (logs, configs, databases: LZ4 halves them) and
already-compressed files (incompressible). This mixes all three, in 64 KiB
blocks chosen by a seeded generator, so the same seed gives the same image.

    sample_image.py make IMG --size 384MiB [--seed N]
    sample_image.py mutate IMG --fraction 0.05 [--seed N]   # rewrite some blocks in place
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path

# The demo and the benchmarks run this from a checkout: the one size grammar is agent.units'.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.units import parse_size

BLOCK = 64 * 1024
WORDS = (
    b"replication batch disk sector journal commit undo retention kernel error warning "
    b"info debug volume snapshot backup restore checksum service request response user "
    b"session timeout config value table index row column select insert update delete "
).split()


def text_pool(rng: random.Random, size: int = 4 << 20) -> bytes:
    """A few MiB of log-like lines: compresses about 2-3x with LZ4, like real text."""
    lines = []
    total = 0
    while total < size:
        words = b" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14)))
        line = b"%d-%02d-%02dT%02d:%02d:%02d host%d %s id=%08x\n" % (
            2026,
            rng.randint(1, 12),
            rng.randint(1, 28),
            rng.randint(0, 23),
            rng.randint(0, 59),
            rng.randint(0, 59),
            rng.randint(1, 40),
            words,
            rng.getrandbits(32),
        )
        lines.append(line)
        total += len(line)
    return b"".join(lines)


def block_content(rng: random.Random, pool: bytes) -> bytes:
    """One 64 KiB block: zeros 30%, text 45%, noise 25%."""
    kind = rng.random()
    if kind < 0.30:
        return bytes(BLOCK)
    if kind < 0.75:
        start = rng.randrange(len(pool) - BLOCK)
        return pool[start : start + BLOCK]
    return rng.randbytes(BLOCK)


def make_image(path: Path, size: int, seed: int) -> None:
    """Write a new image of `size` bytes (a multiple of 64 KiB)."""
    if size % BLOCK:
        raise SystemExit(f"sample_image: size must be a multiple of {BLOCK}")
    rng = random.Random(seed)
    pool = text_pool(rng)
    with open(path, "wb") as f:
        for _ in range(size // BLOCK):
            f.write(block_content(rng, pool))


def mutate_image(path: Path, fraction: float, seed: int) -> int:
    """Rewrite about `fraction` of the blocks of `path` in place; returns how many."""
    rng = random.Random(seed)
    pool = text_pool(rng)
    blocks = os.path.getsize(path) // BLOCK
    chosen = rng.sample(range(blocks), max(1, int(blocks * fraction)))
    with open(path, "r+b") as f:
        for index in sorted(chosen):
            f.seek(index * BLOCK)
            f.write(block_content(rng, pool))
    return len(chosen)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make", help="write a new image")
    make.add_argument("image", type=Path)
    make.add_argument("--size", type=parse_size, required=True)
    make.add_argument("--seed", type=int, default=1)
    mutate = sub.add_parser("mutate", help="change some blocks of an image in place")
    mutate.add_argument("image", type=Path)
    mutate.add_argument("--fraction", type=float, required=True)
    mutate.add_argument("--seed", type=int, default=2)
    args = parser.parse_args()
    if args.command == "make":
        make_image(args.image, args.size, args.seed)
    else:
        changed = mutate_image(args.image, args.fraction, args.seed)
        print(f"changed {changed} blocks of 64 KiB in {args.image}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
