"""NodeAdditionWorkflow: a storage node joins the ring online (the orchestration: ring_change.py)."""

from __future__ import annotations

from temporalio import workflow

from pairdb.workflows.ring_change import RingChangeWorkflow

with workflow.unsafe.imports_passed_through():
    from pairdb.kernel import migration as m
    from pairdb.kernel.migration import ChangeType


@workflow.defn(name=ChangeType.NODE_ADDITION.workflow_name)
class NodeAdditionWorkflow(RingChangeWorkflow):
    @workflow.run
    async def run(self, request: m.NodeAdditionInput) -> m.MigrationState:
        return await self._run(
            m.RingChangeInput(
                request.migration_id,
                ChangeType.NODE_ADDITION,
                request.node_id,
                request.throttle_keys_per_second,
                request.started_by,
                request.hold_at_cutover,
            )
        )
