"""Showing a migration to a person: one status block, or a live progress bar until it ends."""

from __future__ import annotations

import asyncio
import sys
import time

from pairdb.client import Client, MigrationStatus, MigrationSummary

BAR_WIDTH = 30


def describe(s: MigrationStatus) -> str:
    lines = [
        f"migration {s.migration_id} ({s.type})",
        f"  node       {s.node_id}",
        f"  status     {s.status}",
        f"  phase      {s.phase}",
        f"  progress   {s.percent:.1f}%  keys {s.keys_copied:,}/{s.keys_total:,}  "
        f"ranges {s.ranges_done}/{s.ranges_total}  {s.keys_per_second:,.0f} keys/s",
        f"  started    {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(s.started_at))}",
    ]
    if s.estimated_completion and not s.ended:
        lines.append(f"  eta        {time.strftime('%H:%M:%S', time.localtime(s.estimated_completion))}")
    if s.paused:
        lines.append("  paused     yes")
    if s.throttle_keys_per_second:
        lines.append(f"  throttle   {s.throttle_keys_per_second:,} keys/s")
    if s.error:
        lines.append(f"  error      {s.error}")
    lines.append(f"  workflow   {s.workflow_id}" + (f"  {s.workflow_url}" if s.workflow_url else ""))
    return "\n".join(lines)


def listing(rows: list[MigrationSummary]) -> str:
    """One line per ring change, oldest first."""
    if not rows:
        return "no ring changes"
    lines = [f"{'STARTED':<19}  {'TYPE':<16}  {'SUBJECT':<16}  {'STATUS':<11}  {'PHASE':<12}  MIGRATION"]
    for r in rows:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.started_at))
        line = (
            f"{started:<19}  {r.type:<16}  {r.subject:<16}  {r.status:<11}  {r.phase:<12}  {r.migration_id}"
        )
        lines.append(line + (f"  ({r.detail})" if r.detail else ""))
    return "\n".join(lines)


def bar(s: MigrationStatus) -> str:
    filled = int(BAR_WIDTH * min(s.percent, 100.0) / 100)
    return (
        f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {s.percent:5.1f}%  {s.phase:<12} "
        f"{s.keys_copied:,}/{s.keys_total:,} keys  {s.keys_per_second:,.0f}/s"
    )


async def follow(client: Client, migration_id: str, interval: float = 0.5) -> int:
    """Redraw a progress line until the migration ends; exit code 0 only if it completed."""
    tty = sys.stdout.isatty()
    last = ""
    while True:
        status = await client.migration(migration_id)
        line = bar(status)
        if tty:
            print(f"\r{line}", end="", flush=True)
        elif line != last:
            print(line, flush=True)
        last = line
        if status.ended:
            if tty:
                print()
            print(describe(status))
            return 0 if status.status == "completed" else 1
        await asyncio.sleep(interval)
