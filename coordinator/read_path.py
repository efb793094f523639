"""The read path: ask the replicas, return the newest version, repair the stale ones.

A read waits for enough answers to meet its level, returns the newest record
among them, and first writes that record back to the replicas that answered
with something older (read repair), so a value once returned is never
"un-read" by the next quorum. Answers arriving after the reply are checked and
repaired in the background.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import structlog

from coordinator.errors import Unavailable
from coordinator.hlc import HybridLogicalClock
from coordinator.quorum import Consistency, required
from coordinator.routing import Route, route
from coordinator.topology import Topology, TopologyCache
from pairdb.keyspace import Version
from storage_node.client import StoragePool, describe_failure
from storage_node.engine import StoredRecord

log = structlog.get_logger()

_Answer = StoredRecord | None


@dataclass(frozen=True, slots=True)
class ReadResult:
    found: bool
    value: bytes
    version: Version | None


def _newest(answers: list[_Answer]) -> _Answer:
    present = [a for a in answers if a is not None]
    return max(present, key=lambda r: r.version) if present else None


def _is_stale(answer: _Answer, newest: StoredRecord) -> bool:
    return answer is None or answer.version < newest.version


class ReadPath:
    def __init__(self, cache: TopologyCache, pool: StoragePool, clock: HybridLogicalClock) -> None:
        self._cache = cache
        self._pool = pool
        self._clock = clock
        self._background: set[asyncio.Task[None]] = set()

    async def get(self, tenant_id: str, key: str, level: Consistency) -> ReadResult:
        with self._cache.pin() as topology:
            r = await route(self._cache, topology, tenant_id, key, level, write=False)
            return await self._get(r, tenant_id, key)

    async def _get(self, r: Route, tenant_id: str, key: str) -> ReadResult:
        level, replicas = r.plan.level, r.plan.old
        need = required(level, len(replicas))
        asks = {
            asyncio.ensure_future(self._pool.node(n, r.topology.address(n)).get(tenant_id, key)): n
            for n in replicas
        }
        answers: dict[str, _Answer] = {}
        failed: dict[str, str] = {}
        pending = set(asks)
        while pending and len(answers) < need and len(replicas) - len(failed) >= need:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                if exc is None:
                    answers[asks[task]] = task.result()
                else:
                    failed[asks[task]] = describe_failure(exc)
        if len(answers) < need:
            self._later(self._drain(r.topology, {t: asks[t] for t in pending}, None))
            got = ", ".join(sorted(answers)) or "none"
            failures = ", ".join(f"{n} ({why})" for n, why in sorted(failed.items()))
            raise Unavailable(
                f"{level.name} read needs {need} of {len(replicas)} replicas, "
                f"{len(answers)} answered ({got}); failed: {failures}"
            )

        newest = _newest(list(answers.values()))
        if newest is not None:
            self._clock.observe(newest.version)
            stale = [n for n, a in answers.items() if _is_stale(a, newest)]
            if stale:
                await self._repair(r.topology, newest, stale)
        if pending:
            self._later(self._drain(r.topology, {t: asks[t] for t in pending}, newest))
        if newest is None or newest.tombstone:
            return ReadResult(False, b"", newest.version if newest else None)
        return ReadResult(True, newest.value, newest.version)

    async def _repair(self, topology: Topology, newest: StoredRecord, nodes: list[str]) -> None:
        results = await asyncio.gather(
            *(self._pool.node(n, topology.address(n)).apply(newest) for n in nodes), return_exceptions=True
        )
        for node, result in zip(nodes, results, strict=True):
            if isinstance(result, BaseException):
                log.warning(
                    "Read repair failed",
                    node_id=node,
                    tenant_id=newest.tenant_id,
                    key=newest.key,
                    error=describe_failure(result),
                )
            else:
                log.debug("Read repair", node_id=node, tenant_id=newest.tenant_id, key=newest.key)

    async def _drain(
        self, topology: Topology, late: dict[asyncio.Future[_Answer], str], newest: _Answer
    ) -> None:
        """Repair replicas whose answers came after the reply."""
        answers: dict[str, _Answer] = {}
        for task, node in late.items():
            try:
                answers[node] = await task
            except Exception:
                continue  # a replica that failed is repaired by a later read
        best = _newest([newest, *answers.values()])
        if best is None:
            return
        stale = [n for n, a in answers.items() if _is_stale(a, best)]
        if stale:
            await self._repair(topology, best, stale)

    def _later(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
