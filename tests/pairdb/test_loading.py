"""`pairdb load FILE`: every row written, bad rows reported without stopping, an interrupted load resumed.

The command runs as a user runs it, against a real cluster; the resume rules
are checked on the Loader with a scripted client (no cluster).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest

from pairdb.client import Client, ClientError, Unavailable, Value
from pairdb.loading import REJECTED_SUFFIX, STATE_SUFFIX, Loader, LoadFailed, Row, batches, parse_csv_line
from pairdb.local.cluster import LocalCluster

PAIRDB = [sys.executable, "-m", "pairdb.cli"]


async def load(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [*PAIRDB, "load", *args], capture_output=True, text=True, timeout=120
    )


def jsonl(rows: Sequence[object]) -> str:
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)


async def test_a_json_lines_file_is_loaded_and_its_bad_rows_are_reported_not_fatal(
    cluster: LocalCluster, client: Client, tenant: str, scratch_dir: Path
) -> None:
    good = [{"tenant": tenant, "key": f"k{i}", "value": f"v{i}"} for i in range(2000)]
    bad = [
        "{not json",
        {"tenant": tenant, "key": "no value"},
        {"tenant": "no-such-tenant", "key": "k", "value": "v"},
        {"tenant": tenant, "key": "", "value": "empty key"},
    ]
    binary = {"tenant_id": tenant, "key": "bytes", "value_base64": base64.b64encode(b"\x00\xff").decode()}
    path = scratch_dir / "data.jsonl"
    path.write_text(jsonl([*good[:1000], *bad, binary, *good[1000:]]))

    result = await load(
        str(path), "--coordinator", client.address, "--api-key-file", str(cluster.admin_key_file)
    )
    assert result.returncode == 0, result.stderr
    assert "loaded 2,001 keys" in result.stdout
    assert "rejected 4 rows" in result.stdout
    rejected = [
        json.loads(line) for line in (scratch_dir / f"data.jsonl{REJECTED_SUFFIX}").read_text().splitlines()
    ]
    assert [r["line"] for r in rejected] == [1001, 1002, 1003, 1004]
    assert "not JSON" in rejected[0]["error"] and "value" in rejected[1]["error"]
    assert rejected[2]["error"].startswith("NOT_FOUND") and rejected[3]["error"].startswith(
        "INVALID_ARGUMENT"
    )
    read = await client.get_many([(tenant, f"k{i}") for i in range(2000)] + [(tenant, "bytes")])
    assert [r.value for r in read if isinstance(r, Value)] == [
        *(f"v{i}".encode() for i in range(2000)),
        b"\x00\xff",
    ]
    assert not (scratch_dir / f"data.jsonl{STATE_SUFFIX}").exists()  # done: a new run starts over


async def test_a_csv_file_with_a_header_is_loaded(
    cluster: LocalCluster, client: Client, tenant: str, scratch_dir: Path
) -> None:
    path = scratch_dir / "data.csv"
    path.write_text("tenant,key,value\n" + "".join(f'{tenant},c{i},"v,{i}"\n' for i in range(300)) + "a,b\n")
    result = await load(
        str(path), "--coordinator", client.address, "--api-key-file", str(cluster.admin_key_file)
    )
    assert result.returncode == 0, result.stderr
    assert "loaded 300 keys" in result.stdout and "rejected 1 rows" in result.stdout
    assert (await client.get(tenant, "c7")).value == b"v,7"


async def test_a_file_of_unknown_format_or_a_missing_file_is_one_clear_line(scratch_dir: Path) -> None:
    (scratch_dir / "data.txt").write_text("x\n")
    unknown = await load(str(scratch_dir / "data.txt"))
    assert unknown.returncode == 2 and "name it .jsonl or .csv" in unknown.stderr
    missing = await load(str(scratch_dir / "absent.jsonl"))
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_batches_end_at_line_boundaries_and_start_where_a_saved_offset_says(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("".join(f"t,k{i},v{i}\n" for i in range(1200)))
    first = list(batches(path, "csv", 0))
    assert [len(b.rows) for b in first] == [500, 500, 200]
    resumed = list(batches(path, "csv", first[0].end_offset))
    assert resumed[0].rows[0].key == "k500" and resumed[0].rows[0].line == 501
    assert resumed[-1].end_offset == path.stat().st_size


def test_csv_rows_parse_with_quotes_and_a_header_is_skipped() -> None:
    assert parse_csv_line(1, "tenant,key,value") is None
    row = parse_csv_line(2, 't,"a,b","say ""hi"""')
    assert isinstance(row, Row)
    assert (row.tenant_id, row.key, row.value) == ("t", "a,b", b'say "hi"')


class FlakyCluster:
    """A stand-in client: takes `healthy` batches, then answers UNAVAILABLE for every row."""

    def __init__(self, healthy: int) -> None:
        self.healthy = healthy
        self.written: dict[str, bytes | None] = {}

    async def put_many(
        self, items: Sequence[tuple[str, str, bytes | None]], consistency: str = "QUORUM"
    ) -> list[tuple[int, int] | ClientError]:
        if self.healthy <= 0:
            return [Unavailable(grpc.StatusCode.UNAVAILABLE, "no quorum") for _ in items]
        self.healthy -= 1
        self.written.update((k, v) for _, k, v in items)
        return [(1, 1)] * len(items)


async def test_a_load_the_cluster_stops_taking_resumes_where_it_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("pairdb.loading.RETRIES", 1)
    path = tmp_path / "rows.csv"
    path.write_text("".join(f"t,k{i},v{i}\n" for i in range(2600)))
    cluster = FlakyCluster(healthy=3)
    with pytest.raises(LoadFailed, match="Run the same command again to resume"):
        await Loader(cluster, path, "csv", concurrency=1, out=io.StringIO()).run()  # type: ignore[arg-type]
    state = json.loads((tmp_path / f"rows.csv{STATE_SUFFIX}").read_text())
    assert state["offset"] == next(b for i, b in enumerate(batches(path, "csv", 0)) if i == 2).end_offset

    cluster.healthy = 100
    out = io.StringIO()
    report = await Loader(cluster, path, "csv", concurrency=2, out=out).run()  # type: ignore[arg-type]
    assert "resuming rows.csv at byte" in out.getvalue()
    assert report.loaded == 2600 - 1500 and report.resumed_from == state["offset"]
    assert sorted(cluster.written) == sorted(f"k{i}" for i in range(2600))
