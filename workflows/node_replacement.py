"""NodeReplacementWorkflow: a new storage node takes a dead node's tokens online.

It is filled from a quorum of each range's surviving replicas while writes go
to the survivors and to it; the dead node never has to answer. The
orchestration is ring_change.py's.
"""

from __future__ import annotations

from temporalio import workflow

from pairdb.workflows.ring_change import RingChangeWorkflow

with workflow.unsafe.imports_passed_through():
    from pairdb.kernel import migration as m
    from pairdb.kernel.migration import ChangeType


@workflow.defn(name=ChangeType.NODE_REPLACEMENT.workflow_name)
class NodeReplacementWorkflow(RingChangeWorkflow):
    @workflow.run
    async def run(self, request: m.RingChangeInput) -> m.MigrationState:
        return await self._run(request)
