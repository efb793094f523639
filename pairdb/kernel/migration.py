"""What the coordinator, the migration worker and the CLI agree on about a migration.

Phases, statuses and node states are defined here once, with the routing rule
of each phase; so are the inputs and outputs that cross the Temporal boundary.
Plain data only: the workflow imports this module, so it stays free of I/O
(docs/architecture.md, section 1).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

TASK_QUEUE = "pairdb-migrations"


class ChangeType(enum.StrEnum):
    """What a ring change does (the migrations table's type column). Each is the same range
    movement: an old ring and RFs, a new ring and RFs, the ranges whose replica sets differ."""

    NODE_ADDITION = "node_addition"
    NODE_REMOVAL = "node_removal"
    NODE_REPLACEMENT = "node_replacement"
    RF_CHANGE = "rf_change"

    @property
    def workflow_name(self) -> str:
        return _WORKFLOW_NAMES[self]

    @property
    def label(self) -> str:
        """How logs and the UI name it: "Node addition", ..."""
        return self.value.replace("rf_", "replication factor ").replace("_", " ").capitalize()

    @property
    def adds_node(self) -> bool:
        """Whether a new node joins: undone by taking it out and wiping it."""
        return self in (ChangeType.NODE_ADDITION, ChangeType.NODE_REPLACEMENT)


_WORKFLOW_NAMES = {
    ChangeType.NODE_ADDITION: "NodeAdditionWorkflow",
    ChangeType.NODE_REMOVAL: "NodeRemovalWorkflow",
    ChangeType.NODE_REPLACEMENT: "NodeReplacementWorkflow",
    ChangeType.RF_CHANGE: "ReplicationChangeWorkflow",
}
_WORKFLOW_ID_PREFIX = {
    ChangeType.NODE_ADDITION: "add-node-",
    ChangeType.NODE_REMOVAL: "remove-node-",
    ChangeType.NODE_REPLACEMENT: "replace-node-",
    ChangeType.RF_CHANGE: "set-rf-",
}
WORKFLOW_NAME = ChangeType.NODE_ADDITION.workflow_name


class Phase(enum.StrEnum):
    """Where a migration is. `queued` waits for another ring change to finish; `cancelling` and
    `rolling_back` are the way back (compensation); `done` follows cleanup."""

    QUEUED = "queued"
    DUAL_WRITE = "dual_write"
    DATA_COPY = "data_copy"
    CUTOVER = "cutover"
    CLEANUP = "cleanup"
    DONE = "done"
    CANCELLING = "cancelling"
    ROLLING_BACK = "rolling_back"
    # A repair (kernel/repair.py) comparing and syncing replicas; it is `queued` while a ring changes.
    REPAIRING = "repairing"


class Status(enum.StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    ROLLED_BACK = "rolled_back"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.ROLLED_BACK})


class NodeState(enum.StrEnum):
    """A storage node's membership (the nodes table's status column holds these values)."""

    JOINING = "joining"  # receives dual writes and the copy, not yet read from
    ACTIVE = "active"  # in the ring
    LEAVING = "leaving"
    REMOVED = "removed"  # out of the ring for good


class Writes(enum.Enum):
    OLD = "old"
    BOTH = "both"  # old ∪ new, acknowledged when the level is met in each
    NEW = "new"


@dataclass(frozen=True)
class Routing:
    """How requests route while a ring change is in a phase (docs/architecture.md, section 5)."""

    writes: Writes
    reads_new: bool


# Phases in which requests route over both rings; any other phase routes by the current ring alone.
ROUTING: dict[Phase, Routing] = {
    Phase.DUAL_WRITE: Routing(Writes.BOTH, reads_new=False),
    Phase.DATA_COPY: Routing(Writes.BOTH, reads_new=False),
    Phase.CUTOVER: Routing(Writes.BOTH, reads_new=True),
    Phase.CLEANUP: Routing(Writes.NEW, reads_new=True),
    Phase.ROLLING_BACK: Routing(Writes.BOTH, reads_new=False),
}

# Search attributes registered on the Temporal server (`start-dev --search-attribute`).
SA_PHASE = "MigrationPhase"
SA_NODE = "MigrationNode"
SA_STATUS = "MigrationStatus"
SA_TYPE = "MigrationType"

# The workflow's updates, called by name by the coordinator (which sits below the workflow
# layer and so cannot import it).
UPDATE_CANCEL = "cancel_migration"
UPDATE_ROLLBACK = "rollback_migration"
UPDATE_PAUSE = "set_paused"
UPDATE_THROTTLE = "change_throttle"
QUERY_PROGRESS = "progress"


class Undo(enum.Enum):
    """Compensation steps, in the order they run."""

    RESTORE_READS = "restore_reads_on_old"
    # A change that brought a new node in: the node leaves the ring, then loses what it was sent.
    REMOVE_NODE = "remove_joining_node"
    WIPE_NODE = "wipe_joining_node"
    # Any other: the old ring and RFs again, then the nodes that gained ranges lose them.
    RESTORE_RING = "restore_old_ring"
    DROP_GAINED = "drop_gained_ranges"


def undo_steps(phase: Phase, change: ChangeType = ChangeType.NODE_ADDITION) -> list[Undo]:
    """What takes a migration stopped in `phase` back to the old ring, before its status is recorded.

    Used by the workflow and by the reconciler alike. Each step is idempotent.
    """
    back = [Undo.REMOVE_NODE, Undo.WIPE_NODE] if change.adds_node else [Undo.RESTORE_RING, Undo.DROP_GAINED]
    if phase in (Phase.CUTOVER, Phase.ROLLING_BACK):
        return [Undo.RESTORE_READS, *back]
    if phase in (Phase.DUAL_WRITE, Phase.DATA_COPY, Phase.CANCELLING):
        return back
    return []  # queued: nothing changed yet


def workflow_id(subject: str, change: ChangeType = ChangeType.NODE_ADDITION) -> str:
    """One workflow id per node (per tenant for an RF change): Temporal refuses a second one while one runs.

    subject: the node added or removed, the dead node replaced, the tenant whose RF changes.
    """
    return _WORKFLOW_ID_PREFIX[change] + subject


# -- the workflow's input and query result -----------------------------------------------------------


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


@dataclass(frozen=True)
class RingChangeInput:
    """The input of every ring change but an addition; what it changes is in its migration row."""

    migration_id: str
    change: ChangeType
    # The node removed, the dead node replaced, or the tenant whose RF changes.
    subject: str
    throttle_keys_per_second: int = 0
    started_by: str = ""
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
    # The node added, removed or replacing a dead one; the tenant of an RF change.
    node_id: str
    phase: Phase
    status: Status
    paused: bool = False
    throttle_keys_per_second: int = 0
    holding_at_cutover: bool = False
    error: str = ""
    progress: Progress = field(default_factory=Progress)
    phase_history: list[Phase] = field(default_factory=list)


# -- activity inputs and outputs ---------------------------------------------------------------------


@dataclass(frozen=True)
class MigrationRef:
    """An activity that needs only which migration it acts on."""

    migration_id: str


@dataclass(frozen=True)
class EnterPhase:
    migration_id: str
    phase: Phase


@dataclass(frozen=True)
class FinishMigration:
    migration_id: str
    status: Status
    error: str = ""


@dataclass(frozen=True)
class CopyChunk:
    """Copy (or verify) these ranges of a migration's plan, by index."""

    migration_id: str
    range_indexes: list[int]
    throttle_keys_per_second: int = 0


@dataclass(frozen=True)
class CopyPlan:
    ranges_total: int
    keys_total: int
    # The steps the copy (and its verification) runs in: range indexes, a step each. Empty in plans
    # made before steps were sized by keys; their workflows cut CHUNK_RANGES ranges per step.
    chunks: list[list[int]] = field(default_factory=list)


# A copy step holds about this many keys (by the plan's estimates) and at most this many ranges:
# few steps for a small copy (each costs a workflow round trip), steps short enough to resume from.
CHUNK_KEYS = 20_000
CHUNK_MAX_RANGES = 512


def chunked(estimates: Sequence[int]) -> list[list[int]]:
    """Consecutive range indexes grouped into copy steps of about CHUNK_KEYS keys."""
    chunks: list[list[int]] = []
    keys = 0
    for index, estimate in enumerate(estimates):
        if not chunks or keys >= CHUNK_KEYS or len(chunks[-1]) >= CHUNK_MAX_RANGES:
            chunks.append([])
            keys = 0
        chunks[-1].append(index)
        keys += estimate
    return chunks
