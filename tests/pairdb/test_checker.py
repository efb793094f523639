"""The history checker flags what it should, and only that."""

from __future__ import annotations

from pairdb.checker import DELETE, PUT, FinalRead, History, Verdict, check_key

KEY = ("t", "k")


def history(*steps: tuple[str, bytes, tuple[int, int] | None]) -> History:
    """(kind, value, version or None for a failed call) in order."""
    h = History()
    for kind, value, version in steps:
        op = h.begin(kind, *KEY, coordinator=0, value=value)
        if version is None:
            History.failed(op, "UNAVAILABLE")
        else:
            History.ok(op, version)
    return h


def judge(h: History, read: FinalRead) -> Verdict:
    verdict = Verdict()
    check_key(KEY, h.by_key()[KEY], read, verdict)
    return verdict


def test_reading_the_newest_acknowledged_write_is_fine() -> None:
    h = history((PUT, b"a", (10, 1)), (PUT, b"b", (20, 1)))
    assert judge(h, FinalRead(True, b"b", (20, 1))).ok


def test_an_older_value_means_a_lost_write() -> None:
    h = history((PUT, b"a", (10, 1)), (PUT, b"b", (20, 1)))
    verdict = judge(h, FinalRead(True, b"a", (10, 1)))
    assert len(verdict.lost) == 1 and verdict.evidence[KEY]


def test_a_value_from_an_unacknowledged_newer_write_is_allowed() -> None:
    h = history((PUT, b"a", (10, 1)), (PUT, b"b", None))
    assert judge(h, FinalRead(True, b"b", (30, 2))).ok


def test_a_deleted_key_coming_back_is_resurrection() -> None:
    h = history((PUT, b"a", (10, 1)), (DELETE, b"", (20, 1)))
    verdict = judge(h, FinalRead(True, b"a", (10, 1)))
    assert len(verdict.resurrected) == 1 and not verdict.lost
    assert judge(h, FinalRead(False, b"", (20, 1))).ok


def test_a_value_nobody_wrote_is_a_phantom() -> None:
    h = history((PUT, b"a", (10, 1)))
    assert len(judge(h, FinalRead(True, b"zzz", (99, 1))).phantom) == 1


def test_fewer_than_a_quorum_of_replicas_holding_it_is_a_loss() -> None:
    h = history((PUT, b"a", (10, 1)))
    verdict = judge(h, FinalRead(True, b"a", (10, 1), replicas_holding=1, replicas_needed=2))
    assert len(verdict.lost) == 1


def test_nothing_acknowledged_allows_any_outcome() -> None:
    h = history((PUT, b"a", None))
    assert judge(h, FinalRead(False, b"", (0, 0))).ok
    assert judge(h, FinalRead(True, b"a", (5, 1))).ok


def test_a_value_read_back_under_another_version_is_flagged() -> None:
    h = history((PUT, b"a", (10, 1)))
    assert len(judge(h, FinalRead(True, b"a", (12, 1))).phantom) == 1
