"""NodeRemovalWorkflow: a storage node leaves the ring online.

A live node's ranges are copied to the nodes that gain them (from a quorum of
their old replicas, the leaving node among them); a dead node (`--dead`) is
never asked: its ranges are re-replicated from the survivors. The
orchestration is ring_change.py's.
"""

from __future__ import annotations

from temporalio import workflow

from pairdb.workflows.ring_change import RingChangeWorkflow

with workflow.unsafe.imports_passed_through():
    from pairdb.kernel import migration as m
    from pairdb.kernel.migration import ChangeType


@workflow.defn(name=ChangeType.NODE_REMOVAL.workflow_name)
class NodeRemovalWorkflow(RingChangeWorkflow):
    @workflow.run
    async def run(self, request: m.RingChangeInput) -> m.MigrationState:
        return await self._run(request)
