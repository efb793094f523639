"""An operator sees a running migration's node and phase in the Temporal Web UI.

Headless Chromium (tests/cdp.py) opens the UI bundled with the Temporal dev server while a
node addition holds at cutover. NodeAdditionWorkflow publishes its state twice (`_publish`):
as Markdown current details, which the UI renders on the run's "User Metadata" tab, and as
the MigrationNode / MigrationPhase search attributes, listed on the "Search Attributes" tab.
The User Metadata page is saved as docs/temporal-ui-migration.png when
PAIRDB_UPDATE_DOCS=1 (otherwise to a temporary file, so a test run leaves the tree clean).

Skipped without /usr/bin/chromium (Debian: apt-get install -y chromium).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from pairdb.kernel import migration as m
from pairdb.kernel.migration import Phase
from pairdb.local.cluster import LocalCluster
from tests.cdp import CHROMIUM, FRAME_TEXTS, Chromium
from tests.conftest import repo_root
from tests.support import load, wait_ended, wait_phase

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"{CHROMIUM} not found; install Debian's package: apt-get install -y chromium",
)

DOCS_SCREENSHOT = repo_root() / "docs" / "temporal-ui-migration.png"
# The first line of the workflow's current details: **Adding node `node-4`** — phase **cutover**, ...
CURRENT_DETAILS = re.compile(r"Adding node\s+(\S+)\s+\u2014\s+phase\s+(\w+)")
UI_TIMEOUT = 30.0


def tab_href(label: str) -> str:
    """JavaScript: the absolute URL of the workflow page's tab link labelled `label`, else null."""
    return (
        "([...document.querySelectorAll('a')]"
        f".find(a => a.innerText.trim().startsWith({label!r})) || {{}}).href || null"
    )


async def test_ui_shows_node_and_phase_of_migration_held_at_cutover(
    migration_cluster: LocalCluster, tmp_path: Path
) -> None:
    cluster = migration_cluster
    async with cluster.client() as client:
        await client.create_tenant("ui", 3)
        await load(client, ["ui"], 300)
        node4 = await cluster.add_storage_node("node-4")
        added = await client.add_node("node-4", "127.0.0.1", node4.advertised_port, hold_at_cutover=True)
        await wait_phase(client, added.migration_id, Phase.CUTOVER, timeout=60)

        async with await Chromium.launch() as browser:
            # Without a run id the UI resolves the latest run and shows its timeline; the node
            # and phase are on other tabs, whose links name that run.
            await browser.navigate(cluster.temporal_server.workflow_url(m.workflow_id("node-4")))
            await browser.wait_for(tab_href("User Metadata"), UI_TIMEOUT)
            user_metadata = str(await browser.evaluate(tab_href("User Metadata")))
            search_attributes = str(await browser.evaluate(tab_href("Search Attributes")))

            # Current details: Markdown rendered into an iframe, fetched from the worker by a query.
            await browser.navigate(user_metadata)
            await browser.wait_for(
                f"{FRAME_TEXTS}.some(t => /Adding node\\s+node-4\\s+\\u2014\\s+phase\\s+cutover\\b/.test(t))",
                UI_TIMEOUT,
            )
            shown = [
                found.groups() for t in await browser.frame_texts() if (found := CURRENT_DETAILS.search(t))
            ]
            assert shown == [("node-4", "cutover")]
            page = await browser.text()
            assert "add-node-node-4" in page and "RUNNING" in page and "Current Details" in page
            shot = DOCS_SCREENSHOT if os.environ.get("PAIRDB_UPDATE_DOCS") else tmp_path / "temporal-ui.png"
            await browser.screenshot(shot)
            assert shot.stat().st_size > 10_000

            # Search attributes: a JSON object in the page itself.
            await browser.navigate(search_attributes)
            await browser.wait_for(
                """document.body.innerText.includes('"MigrationPhase": "cutover"')""", UI_TIMEOUT
            )
            page = await browser.text()
            assert '"MigrationNode": "node-4"' in page and '"MigrationStatus": "in_progress"' in page

        # Resume the hold, so the migration ends and the cluster shuts down with nothing running.
        await client.pause_migration(added.migration_id, False)
        status = await wait_ended(client, added.migration_id, timeout=60)
        assert status.status == "completed", status.error
