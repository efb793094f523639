"""A tenant's request rate and storage quota: refused with RESOURCE_EXHAUSTED, other tenants unaffected."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys

import pytest

from pairdb.client import Client, NotFound, ResourceExhausted
from pairdb.local.cluster import LocalCluster
from tests.support import scrape, wait_for

_names = itertools.count(1)


def name(prefix: str) -> str:
    return f"{prefix}{next(_names)}"


async def test_requests_beyond_the_rate_are_refused_while_another_tenant_is_unaffected(
    cluster: LocalCluster, client: Client
) -> None:
    limited, free = name("rate"), name("free")
    await client.create_tenant(limited, 3, max_ops_per_second=1)
    await client.create_tenant(free, 3)
    assert (await client.get_tenant(limited)).max_ops_per_second == 1
    # A batch larger than the bucket passes when it is full, and leaves it 999 requests in debt.
    written = await client.put_many([(limited, f"k{i}", b"v") for i in range(1000)])
    assert all(isinstance(r, tuple) for r in written)
    with pytest.raises(
        ResourceExhausted, match=f"tenant {limited} is limited to 1 requests/s per coordinator"
    ):
        await client.put(limited, "one-more", b"v")
    with pytest.raises(ResourceExhausted):
        await client.get(limited, "k1")
    with pytest.raises(ResourceExhausted):
        await client.delete(limited, "k1")
    mixed = await client.put_many([(limited, "a", b"v"), (free, "a", b"v")])
    assert isinstance(mixed[0], ResourceExhausted) and isinstance(mixed[1], tuple)
    for i in range(50):
        await client.put(free, f"k{i}", b"v")
        assert (await client.get(free, f"k{i}")).value == b"v"
    metrics = await scrape(cluster.coordinator_procs[0].metrics_port)
    assert metrics['pairdb_quota_refusals_total{reason="rate"}'] >= 4
    # Lifting the limit is in force at once.
    lifted = await client.set_tenant_limits(limited, max_ops_per_second=0)
    assert lifted.max_ops_per_second == 0
    assert (await client.get(limited, "k1")).value == b"v"


async def test_writes_over_the_storage_quota_are_refused_deletes_are_not_and_writes_resume_after_them(
    client: Client,
) -> None:
    tenant, other = name("quota"), name("roomy")
    await client.create_tenant(tenant, 3, max_bytes=10_000)
    await client.create_tenant(other, 3)
    value = b"x" * 998
    keys = [f"k{i:02d}" for i in range(12)]  # 12 x 1,001 bytes, over the quota
    for key in keys:
        await client.put(tenant, key, value)

    async def refused() -> bool:
        try:
            await client.put(tenant, "probe", b"")
        except ResourceExhausted as exc:
            assert f"tenant {tenant} stores 12 kB, its quota is 10 kB: delete data or raise the quota" in str(
                exc
            )
            return True
        await client.delete(tenant, "probe")
        return False

    await wait_for(refused, timeout=30, what="the storage quota to refuse writes")
    info = await client.get_tenant(tenant)
    assert info.max_bytes == 10_000

    async def counted_once_per_key() -> bool:  # once the last replica has every write
        return (await client.get_tenant(tenant)).stored_bytes == 12 * 1001

    await wait_for(counted_once_per_key, timeout=30, what="the estimate to count each key once")
    batch = await client.put_many([(tenant, "b", b"v"), (tenant, keys[0], None), (other, "b", b"v")])
    assert isinstance(batch[0], ResourceExhausted)
    assert isinstance(batch[1], tuple) and isinstance(batch[2], tuple)  # a delete, and another tenant
    for key in keys[1:6]:
        await client.delete(tenant, key)

    async def allowed() -> bool:
        try:
            await client.put(tenant, "again", b"v")
        except ResourceExhausted:
            return False
        return True

    await wait_for(allowed, timeout=30, what="writes to be allowed again after deletes")
    raised = await client.set_tenant_limits(tenant, max_bytes=0)
    assert raised.max_bytes == 0 and raised.max_ops_per_second == 0


async def test_limits_of_a_tenant_that_does_not_exist_are_not_found(client: Client) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        await client.set_tenant_limits(name("nobody"), max_bytes=1)


def pairdb(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pairdb.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


async def test_limits_are_set_from_the_command_line(cluster: LocalCluster, client: Client) -> None:
    tenant, address, env = name("cli"), cluster.coordinator_address, cluster.cli_env()
    created = await asyncio.to_thread(
        pairdb,
        "tenant",
        "create",
        tenant,
        "--max-ops-per-second",
        "7",
        "--max-bytes",
        "1MB",
        "--coordinator",
        address,
        env=env,
    )
    assert created.returncode == 0, created.stderr
    info = await client.get_tenant(tenant)
    assert (info.max_ops_per_second, info.max_bytes) == (7, 1_000_000)
    changed = await asyncio.to_thread(
        pairdb, "tenant", "set-limits", tenant, "--max-bytes", "2GiB", "--coordinator", address, env=env
    )
    assert changed.returncode == 0, changed.stderr
    assert "7 requests/s per coordinator" in changed.stdout
    info = await client.get_tenant(tenant)
    assert (info.max_ops_per_second, info.max_bytes) == (7, 2 * 2**30)  # the rate left as it was
    bad = await asyncio.to_thread(pairdb, "tenant", "set-limits", tenant, "--max-bytes", "lots")
    assert bad.returncode != 0 and "not a size" in bad.stderr


def test_every_server_takes_its_bound_on_concurrent_rpcs_from_flag_env_or_file() -> None:
    shown = pairdb("config", "show", "coordinator", env={"PAIRDB_MAX_CONCURRENT_RPCS": "50"})
    assert "max_concurrent_rpcs = 50  # env PAIRDB_MAX_CONCURRENT_RPCS" in shown.stdout, shown.stderr
    shown = pairdb("config", "show", "storage-node", "--node-id", "n", "--port", "1", "--data-dir", "d")
    assert "max_concurrent_rpcs = 2000  # default" in shown.stdout, shown.stderr
