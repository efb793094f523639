"""What an operator sees with the real `temporal` CLI while a migration runs."""

from __future__ import annotations

from pairdb.kernel import migration as m
from pairdb.local.cluster import LocalCluster
from tests.support import load, temporal_cli, wait_ended, wait_for


async def test_list_running_migrations_by_phase_and_read_their_details(
    migration_cluster: LocalCluster,
) -> None:
    cluster = migration_cluster
    async with cluster.client() as client:
        await client.create_tenant("ops", 3)
        await load(client, ["ops"], 800)
        node4 = await cluster.add_storage_node("node-4")
        added = await client.add_node(
            "node-4", "127.0.0.1", node4.advertised_port, throttle_keys_per_second=200
        )

        async def listed() -> bool:
            out = await temporal_cli(cluster, "workflow", "list", "--query", 'MigrationPhase="data_copy"')
            return m.workflow_id("node-4") in out

        await wait_for(listed, timeout=60, what="the migration to be listed in data_copy")
        details = await temporal_cli(
            cluster, "workflow", "metadata", "--workflow-id", m.workflow_id("node-4")
        )
        assert "Adding node `node-4`" in details and "phase **data_copy**" in details
        assert "keys/s" in details
        described = await temporal_cli(
            cluster, "workflow", "describe", "--workflow-id", m.workflow_id("node-4")
        )
        assert "Add storage node node-4" in described  # the static summary
        none = await temporal_cli(cluster, "workflow", "list", "--query", 'MigrationPhase="cleanup"')
        assert m.workflow_id("node-4") not in none

        await client.throttle_migration(added.migration_id, 0)
        assert (await wait_ended(client, added.migration_id)).status == "completed"

        async def listed_completed() -> bool:
            done = await temporal_cli(
                cluster,
                "workflow",
                "list",
                "--query",
                'MigrationStatus="completed" AND MigrationNode="node-4"',
            )
            return m.workflow_id("node-4") in done

        await wait_for(listed_completed, timeout=30, what="the visibility store to show it completed")
