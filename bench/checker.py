"""A Jepsen-style history of client operations, and the checker that judges it.

Clients record every operation: what they asked, when it began and ended (by
one monotonic clock), and what came back. After the cluster has converged, the
harness reads every key once more (those reads join the history) and the
checker judges each key on its own:

- linearizable: the key's writes, deletes and reads, successful or not,
  behave as one atomic register (bench/linearizability.py): every read
  returns the value of the latest write before it in some order that respects
  real time. A write whose outcome is unknown may take effect or not, but once
  a read returned it, it stays visible. A failure is reported as
  - lost: the final read misses an acknowledged write;
  - resurrected: the final read returns a value an acknowledged delete removed;
  - stale read: a client's read missed a write acknowledged before it began;
  - not linearizable: anything else (e.g. writes applied out of real-time order);
- phantom: a read returned a value no client wrote, or at a newer version than its write's;
- durable: before the final reads repaired anything, a quorum of the key's
  replicas held the write acknowledged last (by completion time);
- stuck: a migration that did not end, or a registry entry that outlives it.
"""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from dataclasses import dataclass, field

from bench.linearizability import READ, WRITE, Operation, check_register

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
    # A read's answer: whether the key existed (value holds what it read).
    found: bool = False
    # The harness's own read after the run.
    final: bool = False

    def describe(self) -> str:
        version = f"{self.version[0]}@{self.version[1]}" if self.version else "-"
        shown = self.value if self.kind != GET or self.found else "(absent)"
        who = "final" if self.final else f"c{self.coordinator}"
        return (
            f"#{self.id} {self.kind} {self.tenant}/{self.key} value={shown!r} via {who} "
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
    def ok(op: Op, version: Version | None, *, found: bool = False, value: bytes | None = None) -> None:
        op.end, op.outcome, op.version, op.found = time.monotonic(), OK, version, found
        if value is not None:
            op.value = value

    @staticmethod
    def failed(op: Op, error: str) -> None:
        op.end, op.outcome, op.error = time.monotonic(), FAILED, error

    def by_key(self) -> dict[KeyId, list[Op]]:
        grouped: dict[KeyId, list[Op]] = defaultdict(list)
        for op in self.ops:
            grouped[(op.tenant, op.key)].append(op)
        return grouped

    @property
    def acknowledged(self) -> int:
        return sum(1 for op in self.ops if op.kind != GET and op.outcome == OK and not op.final)


@dataclass(frozen=True)
class Durability:
    """How many of a key's current replicas held the last acknowledged write, before any repair."""

    holding: int
    needed: int


@dataclass
class Verdict:
    lost: list[str] = field(default_factory=list)
    resurrected: list[str] = field(default_factory=list)
    stale_reads: list[str] = field(default_factory=list)
    nonlinearizable: list[str] = field(default_factory=list)
    phantom: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    # Keys whose search gave up (too many concurrent unknown outcomes): not judged, so not ok.
    unchecked: list[str] = field(default_factory=list)
    # Key -> its operations, for the keys named above.
    evidence: dict[KeyId, list[Op]] = field(default_factory=dict)

    @property
    def lines(self) -> list[str]:
        return [
            *self.stuck,
            *self.lost,
            *self.resurrected,
            *self.stale_reads,
            *self.nonlinearizable,
            *self.phantom,
            *self.unchecked,
        ]

    @property
    def findings(self) -> int:
        return len(self.lines)

    @property
    def ok(self) -> bool:
        return not self.findings


def last_acknowledged(ops: list[Op]) -> Op | None:
    """The acknowledged write or delete that completed last (real time, not version order)."""
    acked = [op for op in ops if op.kind != GET and op.outcome == OK and op.version is not None]
    return max(acked, key=lambda op: op.end) if acked else None


def check_key(key: KeyId, ops: list[Op], verdict: Verdict, durability: Durability | None = None) -> None:
    name = f"{key[0]}/{key[1]}"
    before = verdict.findings
    _check_values(name, ops, verdict)
    _check_linearizable(name, ops, verdict)
    newest = last_acknowledged(ops)
    if durability is not None and newest is not None and durability.holding < durability.needed:
        verdict.lost.append(
            f"{name}: only {durability.holding} of its replicas held acknowledged #{newest.id} before any "
            f"read repaired it (a quorum needs {durability.needed})"
        )
    if verdict.findings > before:
        verdict.evidence[key] = ops


def _check_values(name: str, ops: list[Op], verdict: Verdict) -> None:
    """Every value read was written by a client, at no newer version than its write was given.

    An older one is fine: a write that went out again above a newer version (or a
    client's retry) left its first version behind on some replicas for a while.
    """
    writers = {op.value: op for op in ops if op.kind == PUT}
    for read in (op for op in ops if op.kind == GET and op.outcome == OK and op.found):
        writer = writers.get(read.value)
        if writer is None:
            verdict.phantom.append(f"{name}: #{read.id} read {read.value!r}, which no client wrote")
        elif (
            writer.outcome == OK
            and read.version is not None
            and writer.version is not None
            and (read.version > writer.version)
        ):
            verdict.phantom.append(
                f"{name}: #{read.id} read {read.value!r} at {read.version}, but #{writer.id} wrote it "
                f"at {writer.version}"
            )


def _check_linearizable(name: str, ops: list[Op], verdict: Verdict) -> None:
    by_id = {op.id: op for op in ops}
    result = check_register([_as_register_op(op) for op in ops if op.kind != GET or op.outcome == OK])
    if result.exhausted:
        verdict.unchecked.append(f"{name}: {result.explanation}")
        return
    if result.linearizable:
        return
    culprit = next((by_id[i] for i in result.culprits if i in by_id), None)
    line = f"{name}: {result.explanation}"
    if culprit is not None and culprit.kind == GET and culprit.final:
        newest = last_acknowledged(ops)
        if culprit.found and newest is not None and newest.kind == DELETE:
            verdict.resurrected.append(line)
        else:
            verdict.lost.append(line)
    elif culprit is not None and culprit.kind == GET:
        verdict.stale_reads.append(line)
    else:
        verdict.nonlinearizable.append(line)


def _as_register_op(op: Op) -> Operation:
    if op.kind == GET:
        return Operation(op.id, READ, op.value if op.found else None, op.start, op.end)
    # A write that failed may still have taken effect (on some replicas, or fully with only the
    # reply lost): its outcome is unknown.
    end = op.end if op.outcome == OK else None
    return Operation(op.id, WRITE, op.value if op.kind == PUT else None, op.start, end)
