"""The schema's CHECK constraints allow exactly the kernel's statuses and node states."""

from __future__ import annotations

import re

from pairdb.coordinator.schema import schema_files
from pairdb.kernel.migration import NodeState, Status


def allowed(table: str, column: str) -> set[str]:
    sql = "\n".join(path.read_text() for _, path in schema_files())
    body = re.search(rf"CREATE TABLE {table} \((.*?)\n\);", sql, flags=re.S)
    assert body is not None, table
    check = re.search(rf"CHECK \({column} IN \(([^)]*)\)\)", body.group(1))
    assert check is not None, (table, column)
    return set(re.findall(r"'([a-z_]+)'", check.group(1)))


def test_node_states_and_migration_statuses_are_the_kernels() -> None:
    assert allowed("nodes", "status") == {s.value for s in NodeState}
    assert allowed("migrations", "status") == {s.value for s in Status}
