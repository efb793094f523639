"""A whole pairdb cluster on this machine: PostgreSQL, storage nodes, coordinators.

`pairdb dev` runs one in the foreground; tests and benchmarks start their own
with free ports. Data lives under one directory and is reused on the next start.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import structlog

from pairdb import config
from pairdb.client import Client, ClientError, RetryPolicy
from pairdb.coordinator.first_key import ensure_admin_key
from pairdb.kernel.migration import TASK_QUEUE
from pairdb.local.faults import TcpProxy
from pairdb.local.postgres import EmbeddedPostgres
from pairdb.local.processes import ManagedProcess, free_port, pairdb_command
from pairdb.local.temporal import TemporalDevServer
from pairdb.security import certs
from pairdb.security.roles import Role
from pairdb.security.tls import ChannelTls, TlsFiles
from pairdb.storage_node.client import NodeClient

log = structlog.get_logger()

DATABASE = "pairdb"


@dataclass
class StorageNodeProcess:
    node_id: str
    port: int
    process: ManagedProcess
    # With network faults on, the cluster reaches the node only through this proxy.
    proxy: TcpProxy | None = None
    metrics_port: int = 0
    # A worker's credentials, when the cluster runs TLS: what tests reach the node with.
    tls: ChannelTls | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def advertised_port(self) -> int:
        """The port the cluster's metadata names for this node."""
        return self.proxy.port if self.proxy else self.port

    def client(self) -> NodeClient:
        return NodeClient(self.node_id, self.address, tls=self.tls)


@dataclass
class CoordinatorProcess:
    coordinator_id: str
    port: int
    process: ManagedProcess
    metrics_port: int = 0
    # With postgres_proxies on, the coordinator reaches PostgreSQL only through this proxy.
    pg_proxy: TcpProxy | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class LocalCluster:
    data_dir: Path
    storage_nodes: int = 3
    coordinators: int = 1
    # 0 picks free ports; `pairdb dev` uses fixed ones so data and addresses match across restarts.
    coordinator_port: int = 0
    storage_base_port: int = 0
    postgres_port: int = 0
    default_tenant: str | None = "default"
    log_level: str = "INFO"
    # Temporal dev server and migration worker: needed for online node addition.
    temporal: bool = True
    temporal_port: int = 0
    temporal_ui_port: int = 0
    # Put a TcpProxy in front of each storage node (for network fault injection).
    proxies: bool = False
    # Give each coordinator its own TcpProxy to PostgreSQL (to cut one coordinator off from it).
    postgres_proxies: bool = False
    # Coordinator lease; chaos runs shorten it so pauses outlive it sooner.
    coordinator_lease_seconds: float = 10.0
    # Virtual nodes of each storage node joined at start; 0 means the coordinator's default.
    # Few make big ranges (a benchmark of one range's copy).
    virtual_nodes: int = 0
    # Create the repair Schedule at start, repairing every tenant this often (0: none; `pairdb dev`: daily).
    repair_every_hours: int = 0
    # TLS on every hop, with a CA and certificates made under data_dir/certs on first start
    # (storage nodes accept only the cluster's coordinators and workers).
    tls: bool = True
    # Coordinators without authentication (--insecure): for the benchmark of what security costs.
    insecure: bool = False
    postgres: EmbeddedPostgres = field(init=False)
    temporal_server: TemporalDevServer = field(init=False)
    worker: ManagedProcess | None = field(init=False, default=None)
    worker_metrics_port: int = field(init=False, default=0)
    worker_sdk_metrics_port: int = field(init=False, default=0)
    dsn: str = field(init=False, default="")
    # The admin API key (in data_dir/admin.key, mode 0600), made when PostgreSQL is first up.
    admin_key: str = field(init=False, default="")
    nodes: dict[str, StorageNodeProcess] = field(init=False, default_factory=dict)
    coordinator_procs: list[CoordinatorProcess] = field(init=False, default_factory=list)
    _worker_tls: ChannelTls | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.resolve()
        self.postgres = EmbeddedPostgres(
            self.data_dir / "postgres",
            port=self.postgres_port,
            log_path=self.data_dir / "logs" / "postgres.log",
        )
        self.temporal_server = TemporalDevServer(
            self.data_dir / "temporal",
            port=self.temporal_port,
            ui_port=self.temporal_ui_port,
            log_path=self.data_dir / "logs" / "temporal.log",
        )

    @property
    def coordinator_address(self) -> str:
        return self.coordinator_procs[0].address

    @property
    def certs_dir(self) -> Path:
        return self.data_dir / "certs"

    def client_tls(self) -> TlsFiles | None:
        """What a client checks the coordinators' certificates with (None without TLS)."""
        return TlsFiles(self.certs_dir / certs.CA_CERT) if self.tls else None

    def process_tls(self, name: str) -> TlsFiles | None:
        """A cluster process's CA and certificate pair (made by tls_flags)."""
        if not self.tls:
            return None
        issued = certs.cert_paths(self.certs_dir, name)
        return TlsFiles(self.certs_dir / certs.CA_CERT, issued.cert, issued.key)

    def worker_tls(self) -> ChannelTls | None:
        """A worker's credentials: what tests and tools reach storage nodes with (one, shared)."""
        if not self.tls:
            return None
        if self._worker_tls is None:
            self.tls_flags("worker", Role.WORKER)
            files = self.process_tls("worker")
            assert files is not None
            self._worker_tls = ChannelTls(files)
        return self._worker_tls

    def channel_settings(
        self, node_id: str | None = None, options: Sequence[tuple[str, Any]] = ()
    ) -> tuple[grpc.ChannelCredentials | None, list[tuple[str, Any]]]:
        """Credentials (None: plaintext) and options of a raw gRPC channel to a coordinator, or
        (node_id) to that storage node as the worker: what tests that craft requests dial with."""
        options = list(options)
        if not self.tls:
            return None, options
        if node_id is None:
            files = self.client_tls()
            assert files is not None
            return ChannelTls(files).credentials(), options
        worker = self.worker_tls()
        assert worker is not None
        return worker.credentials(), [*options, ("grpc.ssl_target_name_override", node_id)]

    def aio_channel(
        self, address: str, node_id: str | None = None, options: Sequence[tuple[str, Any]] = ()
    ) -> grpc.aio.Channel:
        credentials, settings = self.channel_settings(node_id, options)
        if credentials is None:
            return grpc.aio.insecure_channel(address, options=settings)
        return grpc.aio.secure_channel(address, credentials, options=settings)

    def sync_channel(
        self, address: str, node_id: str | None = None, options: Sequence[tuple[str, Any]] = ()
    ) -> grpc.Channel:
        credentials, settings = self.channel_settings(node_id, options)
        if credentials is None:
            return grpc.insecure_channel(address, options=settings)
        return grpc.secure_channel(address, credentials, options=settings)

    def client(self, index: int = 0) -> Client:
        return self.connect(self.coordinator_procs[index].address)

    def credentials(self) -> dict[str, Any]:
        """What a client of this cluster presents: Client(address, **cluster.credentials())."""
        return {"tls": self.client_tls(), "api_key": self.admin_key}

    def cli_env(self) -> dict[str, str]:
        """The environment under which `pairdb` client commands reach this cluster."""
        files = self.client_tls()
        env = {"PAIRDB_API_KEY_FILE": str(self.admin_key_file)}
        return {**env, "PAIRDB_TLS_CA": str(files.ca)} if files else env

    def connect(self, address: str, timeout: float = 10.0, retry: RetryPolicy | None = None) -> Client:
        """A client of the coordinator at address (one of this cluster's, or a stand-in), with the
        cluster's credentials."""
        return Client(address, timeout, retry, **self.credentials())

    def tls_flags(self, name: str, role: Role) -> list[str]:
        """The TLS flags of a process named name, its certificate made on first use."""
        files = self.process_tls(name)
        if files is None:
            return []
        if not files.ca.is_file():
            certs.create_ca(self.certs_dir, common_name=f"pairdb dev CA ({self.data_dir})")
        if files.cert is None or not files.cert.is_file():
            certs.create_cert(self.certs_dir, name, role, hosts=("127.0.0.1", "localhost"))
        return ["--tls-ca", str(files.ca), "--tls-cert", str(files.cert), "--tls-key", str(files.key)]

    @property
    def admin_key_file(self) -> Path:
        return self.data_dir / "admin.key"

    async def start(self) -> None:
        # Private to this user whatever the umask: the tree holds tenants' data, logs and secrets.
        for path in (self.data_dir, self.data_dir / "logs", self.data_dir / "nodes"):
            await asyncio.to_thread(_private_dir, path)
        await self.postgres.start()
        self.dsn = await self.postgres.ensure_database(DATABASE)
        admin = await ensure_admin_key(self.dsn, self.admin_key_file, local=True)
        assert admin is not None  # local: always a key
        self.admin_key = admin.token
        if self.temporal:
            await self.temporal_server.start()
        for i in range(1, self.storage_nodes + 1):
            port = self.storage_base_port + i - 1 if self.storage_base_port else free_port()
            await self.start_storage_node(f"node-{i}", port)
        for i in range(self.coordinators):
            port = self.coordinator_port + i if self.coordinator_port else free_port()
            await self.start_coordinator(port)
        await self._bootstrap()
        if self.temporal:
            await self.start_worker()

    async def stop(self) -> None:
        """Stop everything this cluster started, coordinators first, PostgreSQL last.

        Every step runs even when an earlier one fails, so no server is left behind.
        """
        steps: list[Awaitable[object]] = []
        if self.worker is not None:
            steps.append(self.worker.stop())
        steps.append(asyncio.gather(*(c.process.stop() for c in self.coordinator_procs)))
        steps.append(asyncio.gather(*(n.process.stop() for n in self.nodes.values())))
        steps += [n.proxy.stop() for n in self.nodes.values() if n.proxy is not None]
        steps += [c.pg_proxy.stop() for c in self.coordinator_procs if c.pg_proxy is not None]
        if self.temporal:
            steps.append(self.temporal_server.stop())
        steps.append(self.postgres.stop())
        errors = []
        for step in steps:
            try:
                await step
            except Exception as exc:
                errors.append(exc)
                log.error("Stopping part of the cluster failed", error=repr(exc))
        if errors:
            raise errors[0]

    def _process(self, name: str, *args: str, dsn: str | None = None) -> ManagedProcess:
        """A pairdb child; a DSN goes to it through the environment, never on its command line."""
        return ManagedProcess(
            name,
            pairdb_command(*args, "--log-level", self.log_level),
            self.data_dir / "logs" / f"{name}.log",
            secret_env=config.secret_environment({"postgres_dsn": dsn}) if dsn is not None else None,
        )

    async def start_storage_node(self, node_id: str, port: int) -> StorageNodeProcess:
        metrics_port = free_port()
        proc = self._process(
            node_id,
            "storage-node",
            "--node-id",
            node_id,
            "--port",
            str(port),
            "--data-dir",
            str(self.data_dir / "nodes" / node_id),
            "--metrics-port",
            str(metrics_port),
            *self.tls_flags(node_id, Role.STORAGE_NODE),
        )
        node = StorageNodeProcess(node_id, port, proc, metrics_port=metrics_port, tls=self.worker_tls())
        if self.proxies:
            node.proxy = TcpProxy("127.0.0.1", port)
            await node.proxy.start()
        self.nodes[node_id] = node
        await self.restart_storage_node(node_id)
        return node

    async def restart_storage_node(self, node_id: str) -> None:
        node = self.nodes[node_id]
        await node.process.start()
        client = node.client()
        try:
            await node.process.wait_ready(client.stats)
        finally:
            await client.close()

    async def kill_storage_node(self, node_id: str) -> None:
        await self.nodes[node_id].process.kill()

    async def start_coordinator(
        self,
        port: int,
        dsn: str | None = None,
        *,
        env: dict[str, str] | None = None,
        coordinator_id: str = "",
        wait: bool = True,
        extra_args: tuple[str, ...] = (),
    ) -> CoordinatorProcess:
        """Start one more coordinator; env adds to its environment (e.g. a clock offset).

        extra_args go last on its command line, so they override the cluster's own flags.
        """
        coordinator_id = coordinator_id or f"coordinator-{len(self.coordinator_procs) + 1}"
        pg_proxy = None
        if dsn is None and self.postgres_proxies:
            pg_proxy = TcpProxy("127.0.0.1", self.postgres.port or 0)
            await pg_proxy.start()
            dsn = self.dsn.replace(f":{self.postgres.port}/", f":{pg_proxy.port}/")
        metrics_port = free_port()
        args = ["--port", str(port), "--coordinator-id", coordinator_id]
        args += ["--metrics-port", str(metrics_port), "--lease-seconds", str(self.coordinator_lease_seconds)]
        args += self.tls_flags("coordinator", Role.COORDINATOR)
        if self.insecure:
            args.append("--insecure")
        if self.temporal:
            args += ["--temporal", self.temporal_server.address, "--temporal-ui", self.temporal_server.ui_url]
        args += extra_args
        duplicate = any(c.coordinator_id == coordinator_id for c in self.coordinator_procs)
        proc = self._process(
            f"{coordinator_id}-{port}" if duplicate else coordinator_id,
            "coordinator",
            *args,
            dsn=dsn or self.dsn,
        )
        proc.env = env
        coordinator = CoordinatorProcess(coordinator_id, port, proc, metrics_port, pg_proxy)
        self.coordinator_procs.append(coordinator)
        await proc.start()
        if wait:
            client = self.connect(coordinator.address, timeout=2)
            try:
                await proc.wait_ready(client.nodes)
            finally:
                await client.close()
        return coordinator

    async def restart_coordinator(self, index: int, env: dict[str, str] | None = None) -> None:
        """Start a stopped or killed coordinator again; env, when given, replaces its extra environment.

        A coordinator killed with a live lease waits for that lease to lapse before it serves.
        """
        coordinator = self.coordinator_procs[index]
        if env is not None:
            coordinator.process.env = env
        await coordinator.process.start()
        client = self.connect(coordinator.address, timeout=2)
        try:
            await coordinator.process.wait_ready(client.nodes, timeout=60)
        finally:
            await client.close()

    async def start_worker(self) -> ManagedProcess:
        """The migration worker; started again by the same call after a stop or kill."""
        if self.worker is None:
            self.worker_metrics_port, self.worker_sdk_metrics_port = free_port(), free_port()
            self.worker = self._process(
                "worker",
                "worker",
                "--temporal",
                self.temporal_server.address,
                "--metrics-port",
                str(self.worker_metrics_port),
                "--sdk-metrics-port",
                str(self.worker_sdk_metrics_port),
                *self.tls_flags("worker", Role.WORKER),
                dsn=self.dsn,
            )
        since = time.time()
        await self.worker.start()
        # Ready once Temporal sees *this* process poll the task queue (a killed
        # worker's poller stays listed for a while).
        await self.worker.wait_ready(lambda: self._worker_polling(since), timeout=90)
        return self.worker

    async def _worker_polling(self, since: float) -> None:
        from temporalio.api.enums.v1 import TaskQueueType
        from temporalio.api.taskqueue.v1 import TaskQueue
        from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
        from temporalio.client import Client as TemporalClient

        client = await TemporalClient.connect(self.temporal_server.address)
        reply = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace="default",
                task_queue=TaskQueue(name=TASK_QUEUE),
                task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
            )
        )
        if not any(p.last_access_time.ToSeconds() >= int(since) for p in reply.pollers):
            raise RuntimeError("no worker polls the migration task queue yet")

    async def add_storage_node(self, node_id: str, port: int = 0) -> StorageNodeProcess:
        """Start a storage node process that is not yet part of the ring (to be added by a migration)."""
        return await self.start_storage_node(node_id, port or free_port())

    async def _bootstrap(self) -> None:
        """Join the storage nodes to an empty ring and create the default tenant, once."""
        async with self.client() as client:
            known = {n.node_id for n in await client.nodes()}
            for node in self.nodes.values():
                if node.node_id not in known:
                    await client.add_node(node.node_id, "127.0.0.1", node.advertised_port, self.virtual_nodes)
            if self.default_tenant:
                try:
                    await client.create_tenant(self.default_tenant)
                except ClientError as exc:
                    if exc.code.name != "ALREADY_EXISTS":
                        raise
            if self.temporal and self.repair_every_hours:
                await client.schedule_repair(self.repair_every_hours)


def _private_dir(path: Path) -> None:
    """Create path 0700, or make an existing one (from an older version) 0700."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
