"""What the coordinator, the worker and the CLI agree on about an anti-entropy repair.

A repair is not a ring change: it moves no range, so it has its own workflow
(RepairWorkflow), its own table (`repairs`) and its own inputs, and shares
with migrations only how it is shown and steered: the statuses, the
`progress` query, the cancel/pause/throttle updates and the Temporal search
attributes (MigrationType=repair). Plain data only, as kernel/migration.py.

No `from __future__ import annotations` here: the workflow sandbox resolves these dataclasses'
string annotations in a module view that lacks the names imported from kernel/migration.py.
"""

from dataclasses import dataclass, field

from pairdb.kernel.migration import Progress, Status

WORKFLOW_NAME = "RepairWorkflow"
# The MigrationType search attribute of a repair, next to the ring changes' types.
REPAIR_TYPE = "repair"
# The Temporal Schedule that repairs the whole cluster regularly (`temporal schedule list`).
SCHEDULE_ID = "pairdb-repair"
DEFAULT_INTERVAL_HOURS = 24
# Cassandra's gc_grace_seconds default: a replica may be away this long and still learn of a delete.
DEFAULT_GC_GRACE_SECONDS = 10 * 24 * 3600


def workflow_id(tenant_id: str, suffix: str) -> str:
    """A repair's workflow id (and repair id): its scope, the whole cluster or one tenant, and a
    suffix unique to the run. One runs at a time per scope (the `repairs` table sees to it)."""
    return f"repair-{tenant_id or 'all'}-{suffix}"


@dataclass(frozen=True)
class RepairInput:
    # Only this tenant's records ("" : every tenant's).
    tenant_id: str = ""
    throttle_keys_per_second: int = 0
    started_by: str = ""


@dataclass(frozen=True)
class BeginRepair:
    repair_id: str
    tenant_id: str = ""
    started_by: str = ""


@dataclass(frozen=True)
class RepairRef:
    repair_id: str


@dataclass(frozen=True)
class RepairChunk:
    """Repair these ranges of a repair's plan, by index."""

    repair_id: str
    range_indexes: list[int]
    throttle_keys_per_second: int = 0


@dataclass(frozen=True)
class RepairPlan:
    ranges_total: int
    keys_total: int
    chunks: list[list[int]] = field(default_factory=list)


@dataclass(frozen=True)
class RepairStep:
    """What a repair step did: the repair's progress, or why it did nothing yet."""

    progress: Progress
    # Set when the step repaired nothing because the ring is changing: the workflow waits, then asks again.
    waiting_for: str = ""


@dataclass(frozen=True)
class FinishRepair:
    repair_id: str
    status: Status
    error: str = ""
