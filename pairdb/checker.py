"""A Jepsen-style history of client operations, and the checker that judges it.

Clients record every operation: what they asked, when, and what came back.
After the cluster has converged the checker reads every key back and decides:

- lost: an acknowledged write or delete whose version the read does not reach
  (or that fewer than a quorum of the key's replicas hold);
- resurrected: a key whose newest acknowledged operation is a delete reads back
  as a value older than that delete;
- phantom: a value that no client ever wrote;
- stuck: a migration that is not completed, cancelled or rolled back, or a
  registry entry that outlives its workflow.
"""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

PUT, DELETE, GET = "put", "delete", "get"
OK, FAILED = "ok", "failed"

Version = tuple[int, int]
KeyId = tuple[str, str]


@dataclass
class Op:
    id: int
    kind: str
    tenant: str
    key: str
    value: bytes
    coordinator: int
    start: float
    end: float = 0.0
    outcome: str = ""
    version: Version | None = None
    error: str = ""

    def describe(self) -> str:
        version = f"{self.version[0]}@{self.version[1]}" if self.version else "-"
        return (
            f"#{self.id} {self.kind} {self.tenant}/{self.key} value={self.value!r} via c{self.coordinator} "
            f"[{self.start:.3f}..{self.end:.3f}] {self.outcome} version={version} {self.error}".rstrip()
        )


@dataclass
class History:
    ops: list[Op] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def begin(self, kind: str, tenant: str, key: str, coordinator: int, value: bytes = b"") -> Op:
        op = Op(next(self._ids), kind, tenant, key, value, coordinator, time.monotonic())
        self.ops.append(op)
        return op

    @staticmethod
    def ok(op: Op, version: Version | None) -> None:
        op.end, op.outcome, op.version = time.monotonic(), OK, version

    @staticmethod
    def failed(op: Op, error: str) -> None:
        op.end, op.outcome, op.error = time.monotonic(), FAILED, error

    def by_key(self) -> dict[KeyId, list[Op]]:
        grouped: dict[KeyId, list[Op]] = defaultdict(list)
        for op in self.ops:
            if op.kind != GET:
                grouped[(op.tenant, op.key)].append(op)
        return grouped

    @property
    def acknowledged(self) -> int:
        return sum(1 for op in self.ops if op.kind != GET and op.outcome == OK)


@dataclass(frozen=True)
class FinalRead:
    found: bool
    value: bytes
    version: Version
    # How many of the key's current replicas hold at least the newest acknowledged version.
    replicas_holding: int = 3
    replicas_needed: int = 2


@dataclass
class Verdict:
    lost: list[str] = field(default_factory=list)
    resurrected: list[str] = field(default_factory=list)
    phantom: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    # Key -> its operations, for the keys named above.
    evidence: dict[KeyId, list[Op]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.resurrected or self.phantom or self.stuck)


def newest_acknowledged(ops: Iterable[Op]) -> Op | None:
    acked = [op for op in ops if op.outcome == OK and op.version is not None]
    return max(acked, key=lambda op: op.version or (0, 0)) if acked else None


def check_key(key: KeyId, ops: list[Op], read: FinalRead, verdict: Verdict) -> None:
    newest = newest_acknowledged(ops)
    name = f"{key[0]}/{key[1]}"
    if read.found:
        writer = next((op for op in ops if op.kind == PUT and op.value == read.value), None)
        if writer is None:
            verdict.phantom.append(f"{name}: read {read.value!r}, which no client wrote")
            verdict.evidence[key] = ops
            return
        if writer.outcome == OK and writer.version != read.version:
            verdict.phantom.append(
                f"{name}: read {read.value!r} at {read.version}, but #{writer.id} wrote it "
                f"at {writer.version}"
            )
            verdict.evidence[key] = ops
            return
    if newest is None or newest.version is None:
        return  # nothing acknowledged: any outcome of the in-flight writes is allowed
    if read.version < newest.version:
        if newest.kind == DELETE and read.found:
            verdict.resurrected.append(
                f"{name}: deleted at {newest.version} (#{newest.id}), "
                f"read back {read.value!r} at {read.version}"
            )
        else:
            verdict.lost.append(
                f"{name}: acknowledged #{newest.id} {newest.kind} at {newest.version}, "
                f"read {read.value!r} at {read.version}"
            )
        verdict.evidence[key] = ops
    elif read.replicas_holding < read.replicas_needed:
        verdict.lost.append(
            f"{name}: only {read.replicas_holding} of its replicas hold acknowledged #{newest.id} "
            f"(a quorum needs {read.replicas_needed})"
        )
        verdict.evidence[key] = ops
