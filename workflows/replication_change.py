"""ReplicationChangeWorkflow: a tenant moves to another replication factor online.

Raising it copies the tenant's data to the replicas it gains before reads
count on them; lowering it moves reads to the smaller set first, then cleanup
deletes the copies no longer needed. The orchestration is ring_change.py's.
"""

from __future__ import annotations

from temporalio import workflow

from pairdb.workflows.ring_change import RingChangeWorkflow

with workflow.unsafe.imports_passed_through():
    from pairdb.kernel import migration as m
    from pairdb.kernel.migration import ChangeType


@workflow.defn(name=ChangeType.RF_CHANGE.workflow_name)
class ReplicationChangeWorkflow(RingChangeWorkflow):
    @workflow.run
    async def run(self, request: m.RingChangeInput) -> m.MigrationState:
        return await self._run(request)
