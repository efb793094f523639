"""Asking a key's replicas for it, and collecting their answers as they come.

A read asks every replica of its read set at once and is decided as soon as
its level has enough answers; the others arrive later and are checked by the
read path after its reply. Every replica is asked because read repair is how
a replica that missed writes (it was down, or partitioned) catches up: a read
that asked only a quorum would leave the others stale until a read happened
to ask them. What is returned, and how it is made durable first, is
read_path.py's business; this module only collects answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from pairdb.kernel.keyspace import StoredRecord
from pairdb.storage_node.client import StaleEpoch, StoragePool, describe_failure

Answer = StoredRecord | None


class KeyRead:
    """The asks of one key's read, and the answers taken so far.

    `decision` resolves once the read has `need` answers, can no longer get them,
    or a replica refused it as routed by a stale epoch. Answers arriving later
    are left in `late` for the read path to check after its reply.
    """

    def __init__(
        self,
        pool: StoragePool,
        addresses: dict[str, str],
        epoch: int,
        tenant_id: str,
        key: str,
        replicas: Sequence[str],
        need: int,
    ) -> None:
        self.tenant_id, self.key, self.need = tenant_id, key, need
        self.replicas = tuple(replicas)
        self.answers: dict[str, Answer] = {}
        self.failed: dict[str, str] = {}
        self.stale: StaleEpoch | None = None
        self.late: dict[asyncio.Future[Answer], str] = {}
        self.decision: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for node in self.replicas:
            ask = pool.node(node, addresses[node]).submit_get(tenant_id, key, epoch=epoch)
            self.late[ask] = node
            ask.add_done_callback(self._answered)
        self._decide()

    def _answered(self, ask: asyncio.Future[Answer]) -> None:
        if self.decision.done():
            return  # a late answer: the read path drains it
        node = self.late.pop(ask)
        exc = None if ask.cancelled() else ask.exception()
        if ask.cancelled() or exc is not None:
            self.failed[node] = "cancelled" if exc is None else describe_failure(exc)
            if isinstance(exc, StaleEpoch):
                self.stale = exc
        else:
            self.answers[node] = ask.result()
        self._decide()

    def _decide(self) -> None:
        if self.decision.done():
            return
        possible = len(self.replicas) - len(self.failed)
        if self.stale is not None or len(self.answers) >= self.need or possible < self.need:
            self.decision.set_result(None)
