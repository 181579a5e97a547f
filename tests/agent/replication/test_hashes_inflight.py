"""InflightWrites: when a read made without the disk's lock saw committed content."""

from __future__ import annotations

from agent.replication.inflight_writes import InflightWrites

KiB = 1 << 10


def test_a_read_with_no_batch_around_is_settled() -> None:
    writes = InflightWrites()

    mark = writes.mark()

    assert writes.settled(mark, 0, 64 * KiB)


def test_a_read_over_a_write_of_the_open_batch_is_not_settled() -> None:
    writes = InflightWrites()
    writes.writing([(60 * KiB, 8 * KiB)])
    mark = writes.mark()

    assert not writes.settled(mark, 0, 64 * KiB)
    assert writes.settled(mark, 68 * KiB, 128 * KiB)  # beside it: nothing to fear


def test_a_read_during_which_a_batch_wrote_there_and_ended_is_not_settled() -> None:
    writes = InflightWrites()
    mark = writes.mark()
    writes.writing([(0, 4 * KiB)])
    writes.ended()  # rolled back, perhaps: the read may have seen its data

    assert not writes.settled(mark, 0, 64 * KiB)
    assert writes.settled(mark, 64 * KiB, 128 * KiB)
    assert writes.settled(writes.mark(), 0, 64 * KiB)  # a read begun after it ended


def test_writes_reported_in_pieces_cover_their_whole_range_and_no_more() -> None:
    writes = InflightWrites()
    writes.writing([(0, 4 * KiB), (4 * KiB, 4 * KiB)])
    writes.writing([(8 * KiB, 4 * KiB), (20 * KiB, 4 * KiB)])
    mark = writes.mark()

    assert not writes.settled(mark, 11 * KiB, 12 * KiB)
    assert writes.settled(mark, 12 * KiB, 20 * KiB)
    assert not writes.settled(mark, 23 * KiB, 32 * KiB)


def test_a_read_older_than_the_batches_remembered_is_not_settled() -> None:
    writes = InflightWrites()
    mark = writes.mark()
    for at in range(100):
        writes.writing([(at * 4 * KiB, 4 * KiB)])
        writes.ended()

    # The first batches, which wrote at 0, are forgotten: the read cannot be vouched for.
    assert not writes.settled(mark, 1 << 30, (1 << 30) + 4 * KiB)
    assert writes.settled(writes.generation - 10, 1 << 30, (1 << 30) + 4 * KiB)
