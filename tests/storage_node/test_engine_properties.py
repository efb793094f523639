"""The LMDB engine behaves like a dict of last-write-wins records, whatever the sequence of calls.

A hypothesis state machine drives a real Engine (fresh directory per run)
alongside a model: (tenant, key) -> (version, value, tombstone). A write
replaces the model's record only when it is strictly newer: by version, and at
one version by content (tombstone, then value), so replicas agree whatever the
order of arrival; an identical record changes nothing. Every read the engine offers (get, paged scan, digest,
stats) must agree with the model, also after the engine is closed and reopened.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from pairdb.kernel.keyspace import TOKEN_MAX, Version, token
from pairdb.storage_node.engine import Engine, StoredRecord, digest_of
from pairdb.storage_node.layout import encode_key

# A small pool, so batches collide on the same key and tenants share key names.
TENANTS = ("t", "tenant-2", "x.y")
KEYS = ("k0", "k1", "k2", "k3", "a-longer-key-4", "ключ")
POOL = [(t, k) for t in TENANTS for k in KEYS]
POOL_TOKENS = sorted(token(t, k) for t, k in POOL)

# Range bounds that hit the edges: key tokens and their neighbours, the ends of the ring.
EDGE_TOKENS = sorted(
    {0, 1, TOKEN_MAX - 1, TOKEN_MAX}
    | {max(0, min(TOKEN_MAX, t + d)) for t in POOL_TOKENS for d in (-1, 0, 1)}
)

versions = st.builds(Version, st.integers(0, 4), st.integers(0, 2))  # few values: ties happen


@st.composite
def records(draw: st.DrawFn) -> StoredRecord:
    tenant, key = draw(st.sampled_from(POOL))
    tombstone = draw(st.booleans())
    value = b"" if tombstone else draw(st.binary(max_size=8))
    return StoredRecord(tenant, key, value, draw(versions), tombstone)


bounds = st.one_of(st.sampled_from(EDGE_TOKENS), st.integers(0, TOKEN_MAX))


@st.composite
def ring_ranges(draw: st.DrawFn) -> tuple[int, int]:
    """(start, end]: ordinary, wrapping (start > end) or the whole ring (start == end)."""
    start = draw(bounds)
    end = start if draw(st.integers(0, 4)) == 0 else draw(bounds)
    return start, end


def clockwise_in(t: int, start: int, end: int) -> bool:
    """Written out here rather than imported, so the model does not share the engine's helpers."""
    if start < end:
        return start < t <= end
    return t > start or t <= end  # start == end: every token


@dataclass(frozen=True)
class Entry:
    version: Version
    value: bytes
    tombstone: bool


class EngineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="pairdb-engine-props-"))
        self.engine = Engine(self.dir / "db")
        self.model: dict[tuple[str, str], Entry] = {}

    def teardown(self) -> None:
        self.engine.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- model helpers ------------------------------------------------------------------

    def expected_in(self, start: int, end: int, include_tombstones: bool = True) -> list[StoredRecord]:
        inside = [
            StoredRecord(t, k, e.value, e.version, e.tombstone)
            for (t, k), e in self.model.items()
            if clockwise_in(token(t, k), start, end) and (include_tombstones or not e.tombstone)
        ]
        # Clockwise from start: when the range wraps, tokens above start come first.
        inside.sort(key=lambda r: (start >= end and r.token <= start, encode_key(r.tenant_id, r.key)))
        return inside

    # -- rules ---------------------------------------------------------------------------

    @rule(batch=st.lists(records(), max_size=8))
    def apply_many(self, batch: list[StoredRecord]) -> None:
        expected = []
        for r in batch:
            current = self.model.get((r.tenant_id, r.key))
            newer = current is None or (r.version, r.tombstone, r.value) > (
                current.version,
                current.tombstone,
                current.value,
            )
            expected.append(newer)
            if newer:
                self.model[(r.tenant_id, r.key)] = Entry(r.version, r.value, r.tombstone)
        assert self.engine.apply_many(batch) == expected

    @rule(
        pair=st.sampled_from(POOL),
        history=st.lists(st.tuples(versions, st.booleans(), st.binary(max_size=4)), min_size=2, max_size=6),
    )
    def apply_one_key_out_of_order(
        self, pair: tuple[str, str], history: list[tuple[Version, bool, bytes]]
    ) -> None:
        """Many versions of one key in one batch, in any order, repeats included."""
        tenant, key = pair
        self.apply_many(
            [StoredRecord(tenant, key, b"" if dead else value, v, dead) for v, dead, value in history]
        )

    @rule(pair=st.sampled_from(POOL))
    def get(self, pair: tuple[str, str]) -> None:
        tenant, key = pair
        got = self.engine.get(tenant, key)
        entry = self.model.get(pair)
        if entry is None:
            assert got is None
        else:
            assert got == StoredRecord(tenant, key, entry.value, entry.version, entry.tombstone)

    @rule(rng=ring_ranges(), limit=st.integers(1, 4), include_tombstones=st.booleans())
    def scan(self, rng: tuple[int, int], limit: int, include_tombstones: bool) -> None:
        start, end = rng
        got: list[StoredRecord] = []
        after: bytes | None = None
        for _ in range(len(POOL) + 2):  # more calls than records means the resume key loops
            page, after = self.engine.scan(
                start, end, limit=limit, after=after, include_tombstones=include_tombstones
            )
            assert len(page) <= limit
            got += page
            if after is None:
                break
        else:
            raise AssertionError(f"scan of ({start}, {end}] never ended")
        assert got == self.expected_in(start, end, include_tombstones)

    @rule(rng=ring_ranges())
    def digest(self, rng: tuple[int, int]) -> None:
        start, end = rng
        inside = self.expected_in(start, end)
        got = self.engine.digest(start, end)
        assert got[1] == len(inside)
        assert got == digest_of(reversed(inside), start, end)

    @rule(rng=ring_ranges())
    def delete_range(self, rng: tuple[int, int]) -> None:
        start, end = rng
        gone = [(r.tenant_id, r.key) for r in self.expected_in(start, end)]
        assert self.engine.delete_range(start, end) == len(gone)
        for pair in gone:
            del self.model[pair]
        assert self.engine.scan(start, end, limit=1) == ([], None)

    @rule()
    def crash_and_reopen(self) -> None:
        # Every apply_many/delete_range is its own committed LMDB transaction: nothing is lost.
        self.engine.close()
        self.engine = Engine(self.dir / "db")
        assert self.engine.scan(0, 0, limit=len(POOL) + 1)[0] == self.expected_in(0, 0)

    @invariant()
    def stats_match_the_model(self) -> None:
        live = [e for e in self.model.values() if not e.tombstone]
        stats = self.engine.stats()
        assert (stats.keys, stats.bytes, stats.tombstones) == (
            len(live),
            sum(len(e.value) for e in live),
            len(self.model) - len(live),
        )


EngineMachine.TestCase.settings = settings(
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
TestEngineAgainstModel = EngineMachine.TestCase
