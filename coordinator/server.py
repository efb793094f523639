"""The coordinator process: `pairdb coordinator --port P --postgres-dsn DSN`."""

from __future__ import annotations

import asyncio
import signal
import socket
from dataclasses import dataclass, field

import structlog
from temporalio.client import Client

from pairdb.coordinator import access
from pairdb.coordinator.audit import Auditor
from pairdb.coordinator.auth_store import AuthStore
from pairdb.coordinator.authentication import Authenticator
from pairdb.coordinator.authorization import Authorization
from pairdb.coordinator.handoff import HintReplayer
from pairdb.coordinator.hints import (
    DEFAULT_MAX_HINT_WINDOW,
    DEFAULT_MAX_HINTS_PER_NODE,
    HintLimits,
    HintStore,
)
from pairdb.coordinator.membership import Membership
from pairdb.coordinator.metadata import Metadata
from pairdb.coordinator.migration_store import MigrationStore
from pairdb.coordinator.migrations import Migrations
from pairdb.coordinator.quotas import Quotas
from pairdb.coordinator.read_path import ReadPath
from pairdb.coordinator.repair_store import RepairStore
from pairdb.coordinator.repairs import Repairs
from pairdb.coordinator.replication import Replicator
from pairdb.coordinator.service import CoordinatorService
from pairdb.coordinator.topology import TopologyCache
from pairdb.coordinator.write_path import WritePath
from pairdb.kernel.clocks import DEFAULT_MAX_OFFSET_MS, WallClock
from pairdb.kernel.keyspace import MAX_BATCH_VALUE_BYTES
from pairdb.kernel.sabotage import from_env as sabotage_from_env
from pairdb.proto import coordinator_pb2_grpc
from pairdb.security.exposure import check_listen, postgres_warning
from pairdb.security.temporal_access import TemporalAccess
from pairdb.security.tls import ChannelTls, ServerTls, TlsFiles
from pairdb.serving import metrics
from pairdb.serving.loop_demand import LoopDemand
from pairdb.serving.server import COORDINATOR_MAX_CONCURRENT_RPCS, Health, new_server
from pairdb.storage_node.client import StoragePool

log = structlog.get_logger()

MAX_REQUEST_BYTES = 2 * MAX_BATCH_VALUE_BYTES

COORDINATOR_SERVICE = access.SERVICE


@dataclass(frozen=True)
class CoordinatorConfig:
    postgres_dsn: str = field(repr=False)  # holds a password: never in a repr or traceback
    host: str = "127.0.0.1"
    port: int = 50051
    coordinator_id: str = ""
    # Per storage-node call deadline.
    storage_timeout: float = 2.0
    # Long enough to ride out a starved event loop on a busy machine; a dead
    # coordinator holds a barrier up at most this long.
    lease_seconds: float = 10.0
    # Largest clock offset between any two processes (see pairdb/kernel/clocks.py).
    max_clock_offset_ms: int = DEFAULT_MAX_OFFSET_MS
    # Temporal frontend; without it the coordinator serves data but cannot run migrations.
    temporal_address: str = ""
    temporal_namespace: str = "default"
    temporal_ui_url: str = ""
    # /metrics for Prometheus; 0 turns it off.
    metrics_port: int = 0
    # Hinted handoff's bounds (coordinator/hints.py: HintLimits).
    max_hints_per_node: int = DEFAULT_MAX_HINTS_PER_NODE
    max_hint_window: float = DEFAULT_MAX_HINT_WINDOW
    # The cluster CA and this coordinator's certificate (role coordinator): clients reach it over TLS
    # (a client certificate is optional), and it reaches storage nodes with it (mutual TLS).
    tls: TlsFiles | None = None
    # Mutual TLS for clients too: only holders of a certificate of the CA connect, and one with
    # role admin needs no API key. (gRPC's Python servers cannot ask for an optional one.)
    tls_require_client_cert: bool = False
    temporal_access: TemporalAccess = field(default_factory=TemporalAccess)
    # Serve beyond loopback without TLS, and anyone without credentials.
    insecure: bool = False
    # RPCs served at once; more get RESOURCE_EXHAUSTED (0: no bound).
    max_concurrent_rpcs: int = COORDINATOR_MAX_CONCURRENT_RPCS

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def effective_id(self) -> str:
        return self.coordinator_id or f"coordinator-{socket.gethostname()}-{self.port}"


async def serve(config: CoordinatorConfig) -> None:
    warnings = [
        w
        for w in (
            check_listen(
                "the coordinator",
                config.host,
                tls=config.tls is not None,
                insecure=config.insecure,
                fix="Give it --tls-ca, --tls-cert and --tls-key (pairdb cert create-node --role coordinator)",
            ),
            postgres_warning(config.postgres_dsn, insecure=config.insecure),
        )
        if w
    ]
    sabotage = sabotage_from_env()
    if sabotage:
        log.warning("SABOTAGED: this coordinator is broken on purpose, for tests", sabotage=sorted(sabotage))
    metadata = await Metadata.connect(config.postgres_dsn)
    # The lease's own connection: requests queueing for the pool cannot make it lapse.
    lease_metadata = await Metadata.connect(config.postgres_dsn, min_size=1, max_size=1, migrate=False)
    cache = TopologyCache(
        metadata,
        config.effective_id,
        config.address,
        lease_seconds=config.lease_seconds,
        wall=WallClock.from_env(),
        max_clock_offset_ms=config.max_clock_offset_ms,
        lease_metadata=lease_metadata,
    )
    await cache.start()
    # A coordinator whose loop has work nearly all the time gathers replica calls harder (coalescing.py).
    demand = LoopDemand()
    demand.start()
    pool = StoragePool(
        timeout=config.storage_timeout,
        tls=ChannelTls(config.tls) if config.tls is not None else None,
        short_of_cpu=demand.busy if demand.available else None,
    )
    hints = await HintStore.connect(
        config.postgres_dsn, HintLimits(config.max_hints_per_node, config.max_hint_window)
    )
    hints.start()
    replicator = Replicator(cache, pool, hints)
    replayer = HintReplayer(hints, cache, pool)
    temporal = None
    if config.temporal_address:
        temporal = await Client.connect(
            config.temporal_address,
            namespace=config.temporal_namespace,
            **config.temporal_access.connect_options(),
        )
    repairs = Repairs(RepairStore(metadata), temporal)
    migrations = Migrations(MigrationStore(metadata), temporal, config.temporal_ui_url, repairs)
    quotas = Quotas(cache, pool)
    auth = AuthStore(metadata.pool)
    authenticator = Authenticator(auth, insecure=config.insecure)
    if config.insecure:
        log.warning(
            "INSECURE: authentication is off, every caller is an anonymous admin; "
            "never run a reachable cluster like this",
            coordinator_id=config.effective_id,
        )
    service = CoordinatorService(
        cache,
        metadata,
        WritePath(cache, replicator, cache.clock, sabotage),
        ReadPath(cache, pool, replicator, cache.clock, sabotage),
        Membership(cache, metadata, pool, migrations),
        migrations,
        repairs,
        quotas,
        auth,
        authenticator,
    )
    metrics.serve(config.metrics_port, config.host)
    # Room for a full BatchWrite (16 MiB of values plus keys and framing); larger gets RESOURCE_EXHAUSTED.
    server = new_server(
        [("grpc.max_receive_message_length", MAX_REQUEST_BYTES)],
        wrappers=[Authorization(authenticator, Auditor(auth, config.effective_id))],
        maximum_concurrent_rpcs=config.max_concurrent_rpcs,
    )
    coordinator_pb2_grpc.add_CoordinatorServiceServicer_to_server(service, server)
    # Ready only with a live lease and a working PostgreSQL: otherwise it refuses requests anyway.
    health = Health(server, [COORDINATOR_SERVICE], ready=cache.serving)
    if config.tls is not None:
        tls = ServerTls(config.tls, require_client_cert=config.tls_require_client_cert)
        bound = server.add_secure_port(config.address, tls.credentials())
    else:
        bound = server.add_insecure_port(config.address)
    if bound == 0:
        raise SystemExit(f"coordinator: cannot listen on {config.address}")
    await server.start()
    await health.start()
    replayer.start()
    quotas.start()
    log.info(
        "Coordinator started",
        coordinator_id=config.effective_id,
        address=config.address,
        origin=cache.origin,
        epoch=cache.current.epoch,
        tls=config.tls is not None,
    )
    for warning in warnings:
        metrics.INSECURE.set(1)
        log.warning(warning, coordinator_id=config.effective_id)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("Coordinator stopping", coordinator_id=config.effective_id)
    await health.stop()
    await server.stop(grace=5)
    await replayer.stop()
    await quotas.stop()
    await cache.stop()
    await pool.close()
    await demand.stop()
    await hints.stop()  # after the pool: sends it cancelled may have left hints
    await metadata.close()
    await lease_metadata.close()
    log.info("Coordinator stopped", coordinator_id=config.effective_id)
