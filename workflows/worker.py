"""The migration worker process: `pairdb worker` runs the ring-change and repair workflows, their
activities, and the reconciler."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass, field

import structlog
from temporalio.client import Client
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import Worker

from pairdb.activities.cleanup import CleanupSteps
from pairdb.activities.context import StepContext
from pairdb.activities.copy import CopySteps
from pairdb.activities.reconciler import Reconciler
from pairdb.activities.registry_steps import RegistrySteps
from pairdb.activities.repair import RepairSteps
from pairdb.coordinator.metadata import Metadata
from pairdb.kernel import migration as m
from pairdb.kernel.sabotage import from_env as sabotage_from_env
from pairdb.security.exposure import postgres_warning
from pairdb.security.temporal_access import TemporalAccess
from pairdb.security.tls import ChannelTls, TlsFiles
from pairdb.serving import metrics, priority
from pairdb.serving.loops import stop_task
from pairdb.workflows.node_addition import NodeAdditionWorkflow
from pairdb.workflows.repair import RepairWorkflow
from pairdb.workflows.ring_change import (
    NodeRemovalWorkflow,
    NodeReplacementWorkflow,
    ReplicationChangeWorkflow,
)

WORKFLOWS = [
    NodeAdditionWorkflow,
    NodeRemovalWorkflow,
    NodeReplacementWorkflow,
    ReplicationChangeWorkflow,
    RepairWorkflow,
]

log = structlog.get_logger()


@dataclass(frozen=True)
class WorkerConfig:
    postgres_dsn: str = field(repr=False)  # holds a password: never in a repr or traceback
    temporal_address: str = "127.0.0.1:7233"
    namespace: str = "default"
    storage_timeout: float = 5.0
    # /metrics for pairdb's own metrics, and the Temporal SDK's runtime metrics; 0 turns either off.
    metrics_port: int = 0
    sdk_metrics_port: int = 0
    # The cluster CA and this worker's certificate (role worker): how it reaches storage nodes.
    tls: TlsFiles | None = None
    temporal_access: TemporalAccess = field(default_factory=TemporalAccess)
    # Reach a remote PostgreSQL without a verifying sslmode anyway.
    insecure: bool = False
    # Added niceness (CPU priority) of the process: a worker's work is background work.
    nice: int = priority.BACKGROUND_NICE


def build_worker(client: Client, ctx: StepContext) -> Worker:
    registry, copy, cleanup = RegistrySteps(ctx), CopySteps(ctx), CleanupSteps(ctx)
    repair = RepairSteps(ctx, sabotage_from_env())
    return Worker(
        client,
        task_queue=m.TASK_QUEUE,
        workflows=WORKFLOWS,
        activities=[
            registry.claim_ring_change,
            registry.enable_dual_write,
            registry.enter_phase,
            registry.restore_reads_on_old,
            registry.remove_joining_node,
            registry.restore_old_ring,
            registry.finish_migration,
            copy.plan_copy,
            copy.copy_ranges,
            copy.verify_ranges,
            cleanup.drop_moved_ranges,
            cleanup.wipe_joining_node,
            cleanup.drop_gained_ranges,
            repair.begin_repair,
            repair.plan_repair,
            repair.repair_ranges,
            repair.finish_repair,
        ],
    )


async def serve(config: WorkerConfig) -> None:
    priority.lower(config.nice)  # before the SDK starts its threads
    warning = postgres_warning(config.postgres_dsn, insecure=config.insecure)
    metadata = await Metadata.connect(config.postgres_dsn)
    ctx = StepContext.create(
        metadata, config.storage_timeout, ChannelTls(config.tls) if config.tls is not None else None
    )
    metrics.serve(config.metrics_port)
    runtime = None
    if config.sdk_metrics_port:
        runtime = Runtime(
            telemetry=TelemetryConfig(
                metrics=PrometheusConfig(bind_address=f"127.0.0.1:{config.sdk_metrics_port}")
            )
        )
    client = await Client.connect(
        config.temporal_address,
        namespace=config.namespace,
        runtime=runtime,
        **config.temporal_access.connect_options(),
    )
    worker = build_worker(client, ctx)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "Migration worker started",
        temporal=config.temporal_address,
        task_queue=m.TASK_QUEUE,
        tls=config.tls is not None,
    )
    if warning:
        metrics.INSECURE.set(1)
        log.warning(warning)
    reconciling = asyncio.create_task(Reconciler(ctx, client).run(stop), name="reconciler")
    async with worker:
        await stop.wait()
        log.info("Migration worker stopping")
    await stop_task(reconciling)  # a pass in the middle of a barrier is picked up again by any worker
    await ctx.pool.close()
    await metadata.close()
    log.info("Migration worker stopped")
