"""Sequence-gap tracking: what is missed, repaired, lost, and when it is asked for again."""

from __future__ import annotations

from cloud_sync.gaps import GapTracker, ReplayRange, ranges


def test_a_jump_is_missed_then_repaired_by_the_late_readings() -> None:
    t = GapTracker(retry_s=2.0)
    for seq in (5, 6, 9, 10):
        t.see("s1", "pcc", seq, now=0.0)
    assert (t.gaps, t.missed, t.missing) == (1, 2, 2)
    assert t.due_requests(now=1.0) == []  # not before retry_s: a late redelivery may come
    assert t.due_requests(now=2.0) == [ReplayRange("s1", "pcc", 7, 8)]
    t.see("s1", "pcc", 8, now=2.1)
    t.see("s1", "pcc", 7, now=2.1)
    t.see("s1", "pcc", 7, now=2.2)  # the same again: a duplicate, not a repair
    assert (t.missing, t.repaired, t.duplicates, t.lost) == (0, 2, 1, 0)
    assert t.due_requests(now=10.0) == []


def test_streams_are_separate_and_the_first_reading_starts_a_stream() -> None:
    t = GapTracker()
    t.see("s1", "pcc", 100, now=0.0)  # joining a running stream is not a gap
    t.see("s2", "pcc", 0, now=0.0)
    t.see("s1", "pv", 3, now=0.0)
    t.see("s2", "pcc", 1, now=0.0)
    assert (t.gaps, t.missing) == (0, 0)
    t.see("s1", "pv", 6, now=0.0)
    assert t.due_requests(now=5.0) == [ReplayRange("s1", "pv", 4, 5)]


def test_missing_readings_count_lost_after_the_attempts_run_out() -> None:
    t = GapTracker(retry_s=1.0, max_attempts=2)
    t.see("s1", "pcc", 0, now=0.0)
    t.see("s1", "pcc", 4, now=0.0)
    assert len(t.due_requests(now=1.0)) == 1
    t.see("s1", "pcc", 2, now=1.5)  # progress: the attempts start again
    assert t.due_requests(now=2.0) == [
        ReplayRange("s1", "pcc", 1, 1),
        ReplayRange("s1", "pcc", 3, 3),
    ]
    assert len(t.due_requests(now=3.0)) == 2
    assert t.due_requests(now=4.0) == []  # two fruitless requests: given up
    assert (t.missing, t.lost, t.repaired) == (0, 2, 1)


def test_a_restarted_publisher_loses_what_its_stream_still_missed() -> None:
    t = GapTracker()
    for seq in (0, 1, 5):
        t.see("s1", "pcc", seq, now=0.0)
    t.see("s1", "pcc", 0, now=1.0)
    t.see("s1", "pcc", 1, now=1.0)
    assert (t.restarts, t.lost, t.missing, t.duplicates) == (1, 3, 0, 0)


def test_a_huge_jump_tracks_at_most_max_missing() -> None:
    t = GapTracker(max_missing=10)
    t.see("s1", "pcc", 0, now=0.0)
    t.see("s1", "pcc", 1001, now=0.0)
    assert (t.missed, t.missing, t.lost) == (1000, 10, 990)
    assert t.due_requests(now=5.0) == [ReplayRange("s1", "pcc", 991, 1000)]


def test_ranges_are_contiguous_runs() -> None:
    assert ranges({9, 1, 2, 3, 7, 8}) == [(1, 3), (7, 9)]
    assert ranges(set()) == []
