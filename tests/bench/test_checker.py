"""The history checker flags what it should, and only that.

Each test builds one key's history by hand, with explicit real-time intervals.
"""

from __future__ import annotations

from bench.checker import DELETE, GET, PUT, Durability, History, Op, Verdict, check_key

KEY = ("t", "k")


class Script:
    """One key's history: each step at its own time, unless told to overlap."""

    def __init__(self) -> None:
        self.history = History()
        self.clock = 0.0

    def op(
        self,
        kind: str,
        value: bytes = b"",
        version: tuple[int, int] | None = (0, 0),
        *,
        found: bool = True,
        ok: bool = True,
        start: float | None = None,
        end: float | None = None,
        final: bool = False,
    ) -> Op:
        o = self.history.begin(kind, *KEY, coordinator=0, value=value)
        o.start = self.clock if start is None else start
        o.end = o.start + 1 if end is None else end
        o.outcome = "ok" if ok else "failed"
        o.version = version if ok else None
        o.found = found if kind == GET else False
        o.final = final
        self.clock = max(self.clock, o.end) + 1
        return o

    def put(self, value: bytes, hlc: int, **kw: object) -> Op:
        return self.op(PUT, value, (hlc, 1), **kw)  # type: ignore[arg-type]

    def delete(self, hlc: int, **kw: object) -> Op:
        return self.op(DELETE, b"", (hlc, 1), **kw)  # type: ignore[arg-type]

    def read(self, value: bytes | None, hlc: int = 0, **kw: object) -> Op:
        return self.op(GET, value or b"", (hlc, 1), found=value is not None, **kw)  # type: ignore[arg-type]

    def judge(self, durability: Durability | None = None) -> Verdict:
        verdict = Verdict()
        check_key(KEY, self.history.by_key()[KEY], verdict, durability)
        return verdict


def test_reading_the_last_acknowledged_write_is_fine() -> None:
    s = Script()
    s.put(b"a", 10)
    s.put(b"b", 20)
    s.read(b"b", 20, final=True)
    assert s.judge().ok


def test_a_final_read_missing_an_acknowledged_write_is_a_lost_write() -> None:
    s = Script()
    s.put(b"a", 10)
    s.put(b"b", 20)
    s.read(b"a", 10, final=True)
    verdict = s.judge()
    assert len(verdict.lost) == 1 and verdict.evidence[KEY]


def test_a_client_read_missing_a_write_acknowledged_before_it_began_is_a_stale_read() -> None:
    s = Script()
    s.put(b"a", 10)
    s.put(b"b", 20)
    s.read(b"a", 10)
    s.read(b"b", 20, final=True)
    verdict = s.judge()
    assert len(verdict.stale_reads) == 1 and not verdict.lost


def test_newest_is_by_completion_time_not_by_version() -> None:
    """Clock skew: the later write got the lower version, and a read returning the earlier one is wrong."""
    s = Script()
    s.put(b"first", 50)  # from a coordinator whose clock runs ahead
    s.put(b"second", 20)  # acknowledged after "first" was
    s.read(b"first", 50, final=True)
    assert len(s.judge().lost) == 1


def test_a_value_from_an_unacknowledged_write_is_allowed_and_then_must_stay() -> None:
    s = Script()
    s.put(b"a", 10)
    s.put(b"b", 30, ok=False)
    s.read(b"b", 30)
    s.read(b"b", 30, final=True)
    assert s.judge().ok

    s = Script()
    s.put(b"a", 10)
    s.put(b"b", 30, ok=False)
    s.read(b"b", 30)
    s.read(b"a", 10, final=True)  # once read, it must stay visible
    assert not s.judge().ok


def test_a_deleted_key_coming_back_is_resurrection() -> None:
    s = Script()
    s.put(b"a", 10)
    s.delete(20)
    s.read(b"a", 10, final=True)
    verdict = s.judge()
    assert len(verdict.resurrected) == 1 and not verdict.lost

    s = Script()
    s.put(b"a", 10)
    s.delete(20)
    s.read(None, 20, final=True)
    assert s.judge().ok


def test_a_value_nobody_wrote_is_a_phantom() -> None:
    s = Script()
    s.put(b"a", 10)
    s.read(b"zzz", 99, final=True)
    assert len(s.judge().phantom) == 1


def test_a_value_read_at_a_newer_version_than_its_write_is_a_phantom() -> None:
    s = Script()
    s.put(b"a", 10)
    s.read(b"a", 12, final=True)
    assert len(s.judge().phantom) == 1
    s = Script()
    s.put(b"a", 10)
    s.read(b"a", 8, final=True)  # an earlier version of the same write: it went out again
    assert s.judge().ok


def test_fewer_than_a_quorum_of_replicas_holding_the_last_write_is_a_loss() -> None:
    s = Script()
    s.put(b"a", 10)
    s.read(b"a", 10, final=True)
    verdict = s.judge(Durability(holding=1, needed=2))
    assert len(verdict.lost) == 1 and "before any read repaired it" in verdict.lost[0]
    assert s.judge(Durability(holding=2, needed=2)).ok


def test_nothing_acknowledged_allows_any_outcome_of_the_writes_in_flight() -> None:
    s = Script()
    s.put(b"a", 10, ok=False)
    s.read(None, final=True)
    assert s.judge().ok
    s = Script()
    s.put(b"a", 10, ok=False)
    s.read(b"a", 10, final=True)
    assert s.judge().ok


def test_concurrent_writes_may_land_in_either_order() -> None:
    s = Script()
    s.put(b"a", 30, start=0, end=5)
    s.put(b"b", 20, start=1, end=6)
    s.read(b"a", 30, final=True)
    assert s.judge().ok
