"""The coordinator's side of migrations: start NodeAdditionWorkflow, report on it, steer it.

The coordinator never runs migration code; it starts and signals the workflow
on Temporal by name, and reads progress from PostgreSQL, which the worker's
activities keep current.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from pairdb.coordinator.metadata import MigrationRow
from pairdb.coordinator.migration_store import MigrationStore, NewChange
from pairdb.coordinator.repairs import Repairs
from pairdb.kernel import migration as m
from pairdb.kernel.errors import AlreadyExists, FailedPrecondition, NotFound, Unavailable
from pairdb.kernel.migration import TERMINAL, Phase, Status

log = structlog.get_logger()

# An update needs a worker to run a workflow task; after a worker crash that
# can take one workflow-task timeout (10 s).
UPDATE_TIMEOUT = timedelta(seconds=6)
# For estimated_completion before the copy has measured its own rate.
ASSUMED_KEYS_PER_SECOND = 5_000
# How long a status reuses what the workflow said of its pause and throttle. Asking it costs
# ~12 ms of CPU across this coordinator, Temporal and the worker (their own, while they move
# data), and a watcher asks every half second. Changes made through this coordinator show at
# once; changes made elsewhere (another coordinator, the temporal CLI) within this.
CONTROL_SECONDS = 2.0
# Workflows whose answer is kept at most: one ring change and a few repairs run at a time.
CONTROLS_KEPT = 64


@dataclass(frozen=True, slots=True)
class Started:
    migration_id: str
    workflow_id: str
    estimated_completion: datetime


@dataclass(frozen=True, slots=True)
class Control:
    paused: bool
    throttle_keys_per_second: int


class Migrations:
    def __init__(
        self,
        store: MigrationStore,
        temporal: Client | None,
        ui_url: str = "",
        repairs: Repairs | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._temporal = temporal
        self._ui_url = ui_url.rstrip("/")
        # Repairs are shown and steered like migrations (by their id, their workflow's updates).
        self._repairs = repairs
        self._clock = clock
        self._controls: dict[str, tuple[float, Control]] = {}  # workflow id: (asked at, answer)
        self._updated_at = float("-inf")  # the last update this coordinator sent

    def _client(self) -> Client:
        if self._temporal is None:
            raise FailedPrecondition(
                "this coordinator has no Temporal address (--temporal), so it cannot run migrations"
            )
        return self._temporal

    def workflow_url(self, workflow_id: str) -> str:
        if not self._ui_url or self._temporal is None:
            return ""
        return f"{self._ui_url}/namespaces/{self._temporal.namespace}/workflows/{workflow_id}"

    async def start(
        self,
        change: NewChange,
        request: m.NodeAdditionInput | m.RingChangeInput,
        subject: str,
        summary: str,
        keys_to_move: int,
    ) -> Started:
        """Record the ring change (queued) and start its workflow; the workflow id says what it changes."""
        client = self._client()
        workflow_id = m.workflow_id(subject, change.change)
        recorded = await self._store.create(change, workflow_id)
        log.info(
            f"Starting {change.change.label.lower()} migration",
            migration_id=change.migration_id,
            **_fields(change),
        )
        try:
            await client.start_workflow(
                change.change.workflow_name,
                request,
                id=workflow_id,
                task_queue=m.TASK_QUEUE,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                search_attributes=TypedSearchAttributes(
                    [
                        SearchAttributePair(SearchAttributeKey.for_keyword(m.SA_PHASE), Phase.QUEUED),
                        SearchAttributePair(SearchAttributeKey.for_keyword(m.SA_NODE), subject),
                        SearchAttributePair(SearchAttributeKey.for_keyword(m.SA_STATUS), Status.QUEUED),
                        SearchAttributePair(SearchAttributeKey.for_keyword(m.SA_TYPE), change.change),
                    ]
                ),
                static_summary=summary,
                static_details=(
                    f"**{change.change.label}**: {summary}\n\n"
                    f"migration `{change.migration_id}`, started by {change.started_by or 'unknown'}"
                ),
            )
        except WorkflowAlreadyStartedError:
            # Another migration's workflow runs under this id: ours never started, nobody knows its id.
            await self._store.delete(change.migration_id)
            raise AlreadyExists(
                f"{subject} already has a {change.change.label.lower()} running (workflow {workflow_id})"
            ) from None
        except RPCError as exc:
            # The start may have reached Temporal before the error: never delete a row a workflow may
            # own. What never started, the worker's reconciler ends (`failed`, "never started").
            if not await self._started(workflow_id, recorded.started_at):
                raise Unavailable(
                    f"could not confirm that Temporal started the migration workflow ({exc}); "
                    f"see `pairdb migration status {change.migration_id}` before retrying"
                ) from None
        log.info(
            f"{change.change.label} migration started", migration_id=change.migration_id, **_fields(change)
        )
        eta = datetime.now(UTC) + timedelta(seconds=10 + keys_to_move / ASSUMED_KEYS_PER_SECOND)
        return Started(change.migration_id, workflow_id, eta)

    async def start_node_addition(self, request: m.NodeAdditionInput, keys_to_move: int) -> Started:
        node_id, host, port = request.node_id, request.host, request.port
        return await self.start(
            NewChange.addition(request),
            request,
            node_id,
            f"Add storage node {node_id} at {host}:{port}, {request.virtual_nodes} virtual nodes",
            keys_to_move,
        )

    async def _started(self, workflow_id: str, since: datetime) -> bool:
        """Whether this migration's workflow runs after all: a run of its id started since it was recorded."""
        try:
            described = (
                await self._client().get_workflow_handle(workflow_id).describe(rpc_timeout=UPDATE_TIMEOUT)
            )
        except Exception:
            return False
        return described.status == WorkflowExecutionStatus.RUNNING and described.start_time >= since

    async def listing(self, recent: int) -> list[MigrationRow]:
        """Ring changes and repairs: the running ones and the `recent` last ended of each, oldest first."""
        rows = await self._store.listing(recent)
        if self._repairs is not None:
            rows += await self._repairs.listing(recent)
        return sorted(rows, key=lambda row: row.started_at)

    async def get(self, migration_id: str) -> MigrationRow:
        row = await self._store.get(migration_id)
        if row is None and self._repairs is not None:
            row = await self._repairs.get(migration_id)
        if row is None:
            raise NotFound(f"migration {migration_id!r} does not exist")
        return row

    async def control(self, row: MigrationRow) -> Control:
        """Pause and throttle as the running workflow has them (defaults once it ended).

        An answer younger than CONTROL_SECONDS is reused, unless this coordinator
        sent the workflow an update since it was asked for.
        """
        if row.status in TERMINAL or self._temporal is None:
            self._controls.pop(row.workflow_id, None)
            return Control(False, 0)
        asked_at = self._clock()
        kept = self._controls.get(row.workflow_id)
        if kept is not None and asked_at - kept[0] < CONTROL_SECONDS and kept[0] > self._updated_at:
            return kept[1]
        try:
            state = await self._temporal.get_workflow_handle(row.workflow_id).query(
                m.QUERY_PROGRESS, result_type=m.MigrationState
            )
        except RPCError:
            return Control(False, 0)
        control = Control(state.paused, state.throttle_keys_per_second)
        if len(self._controls) >= CONTROLS_KEPT:
            self._controls.clear()
        self._controls[row.workflow_id] = (asked_at, control)
        return control

    async def _update(self, migration_id: str, update: str, *args: object) -> str:
        row = await self.get(migration_id)
        if row.status in TERMINAL:
            raise FailedPrecondition(f"migration {migration_id} has ended ({row.status})")
        handle = self._client().get_workflow_handle(row.workflow_id)
        try:
            # Bounded as a whole, so the caller hears UNAVAILABLE before its own deadline.
            async with asyncio.timeout(UPDATE_TIMEOUT.total_seconds()):
                result = await handle.execute_update(update, args=list(args), rpc_timeout=UPDATE_TIMEOUT)
        except WorkflowUpdateFailedError as exc:
            raise FailedPrecondition(str(exc.cause or exc)) from None
        except (RPCError, WorkflowUpdateRPCTimeoutOrCancelledError, TimeoutError) as exc:
            raise Unavailable(
                f"the migration workflow did not answer ({exc}); is a pairdb worker running? retry shortly"
            ) from None
        finally:
            # Whatever became of it, no status answers from before it (not even one asked meanwhile).
            self._updated_at = self._clock()
        return str(result)

    async def cancel(self, migration_id: str) -> str:
        return await self._update(migration_id, m.UPDATE_CANCEL)

    async def rollback(self, migration_id: str) -> str:
        return await self._update(migration_id, m.UPDATE_ROLLBACK)

    async def pause(self, migration_id: str, paused: bool) -> str:
        await self._update(migration_id, m.UPDATE_PAUSE, paused)
        return "paused" if paused else "resumed"

    async def throttle(self, migration_id: str, keys_per_second: int) -> str:
        value = await self._update(migration_id, m.UPDATE_THROTTLE, keys_per_second)
        return f"throttle set to {value} keys/s" if value != "0" else "throttle removed"


def _fields(change: NewChange) -> dict[str, object]:
    """What a log line says of a ring change: its node (host, port) or its tenant."""
    if change.tenant_id:
        return {"tenant_id": change.tenant_id, "replication_factor": change.replication_factor}
    fields: dict[str, object] = {"node_id": change.node_id, "host": change.host, "port": change.port}
    if change.replaces:
        fields["replaces"] = change.replaces
    return fields
