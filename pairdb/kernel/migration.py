"""What the coordinator, the migration worker and the CLI agree on about a migration.

Plain dataclasses and names only: the workflow imports this module, so it must
stay free of I/O (docs/architecture.md, section 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

TASK_QUEUE = "pairdb-migrations"
WORKFLOW_NAME = "NodeAdditionWorkflow"

# Phases, in order. `queued` waits for another ring change to finish; the
# in-between phases `cancelling` and `rolling_back` route like "no migration"
# and "reads on old" respectively while compensation runs.
QUEUED = "queued"
DUAL_WRITE = "dual_write"
DATA_COPY = "data_copy"
CUTOVER = "cutover"
CLEANUP = "cleanup"
DONE = "done"
CANCELLING = "cancelling"
ROLLING_BACK = "rolling_back"
PHASES = (QUEUED, DUAL_WRITE, DATA_COPY, CUTOVER, CLEANUP, DONE)

# Statuses. Terminal ones end the migration.
S_QUEUED = "queued"
S_IN_PROGRESS = "in_progress"
S_COMPLETED = "completed"
S_FAILED = "failed"
S_CANCELLED = "cancelled"
S_ROLLED_BACK = "rolled_back"
TERMINAL_STATUSES = (S_COMPLETED, S_FAILED, S_CANCELLED, S_ROLLED_BACK)

# Search attributes registered on the Temporal server (`start-dev --search-attribute`).
SA_PHASE = "MigrationPhase"
SA_NODE = "MigrationNode"
SA_STATUS = "MigrationStatus"


# Compensation steps (activity names), in order, for a migration stopped in a phase.
UNDO_RESTORE_READS = "restore_reads_on_old"
UNDO_REMOVE_NODE = "remove_joining_node"
UNDO_WIPE_NODE = "wipe_joining_node"


def undo_steps(phase: str) -> list[str]:
    """What takes a migration stopped in `phase` back to the old ring, before its status is recorded.

    Used by the workflow and by the reconciler alike. Each step is idempotent.
    """
    if phase in (CUTOVER, ROLLING_BACK):
        return [UNDO_RESTORE_READS, UNDO_REMOVE_NODE, UNDO_WIPE_NODE]
    if phase in (DUAL_WRITE, DATA_COPY, CANCELLING):
        return [UNDO_REMOVE_NODE, UNDO_WIPE_NODE]
    return []  # queued: nothing joined yet


def workflow_id(node_id: str) -> str:
    """One workflow id per node: Temporal refuses a second addition of the same node while one runs."""
    return f"add-node-{node_id}"


@dataclass(frozen=True)
class NodeAdditionInput:
    migration_id: str
    node_id: str
    host: str
    port: int
    virtual_nodes: int
    # Copy throttle in keys per second; 0 means unthrottled.
    throttle_keys_per_second: int = 0
    started_by: str = ""
    # Stay in cutover (reads on the new replicas, old ones still complete) until
    # resumed, so an operator can check before cleanup drops the old copies.
    hold_at_cutover: bool = False


@dataclass
class Progress:
    keys_copied: int = 0
    keys_total: int = 0
    bytes_copied: int = 0
    ranges_done: int = 0
    ranges_total: int = 0
    keys_per_second: float = 0.0
    eta_seconds: float = 0.0

    @property
    def percent(self) -> float:
        if self.ranges_total == 0:
            return 0.0
        if self.keys_total:
            return min(100.0, 100.0 * self.keys_copied / self.keys_total)
        return 100.0 * self.ranges_done / self.ranges_total


@dataclass
class MigrationState:
    """What the workflow's `progress` query returns."""

    migration_id: str
    node_id: str
    phase: str
    status: str
    paused: bool = False
    throttle_keys_per_second: int = 0
    holding_at_cutover: bool = False
    error: str = ""
    progress: Progress = field(default_factory=Progress)
    phase_history: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CopyChunk:
    """Copy (or verify) these ranges of a migration's plan, by index."""

    migration_id: str
    range_indexes: list[int]
    throttle_keys_per_second: int = 0


@dataclass(frozen=True)
class ChunkResult:
    ranges_done: int
    keys: int
    bytes: int
    # Ranges found different on verification and copied again.
    recopied: int = 0


@dataclass(frozen=True)
class CopyPlan:
    ranges_total: int
    keys_total: int
