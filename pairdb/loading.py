"""Bulk loading: `pairdb load FILE` writes a file of (tenant, key, value) rows through BatchWrite.

Formats: JSON Lines, one object per line with "tenant" (or "tenant_id"),
"key" and "value" (a string, stored as UTF-8; or "value_base64" for bytes);
or CSV with the columns tenant,key,value (a header row with those names is
skipped). Which one is told by the file name (.jsonl/.ndjson, .csv) or
`--format`.

A row that cannot be stored — it does not parse, or the coordinator refuses
it (bad key, unknown tenant, value over the limit) — is rejected: written with
its line number and the reason to FILE.rejected.jsonl, and the load goes on.
A row the cluster cannot take right now (UNAVAILABLE) is retried; if it still
fails, the load stops and says so, and nothing is skipped.

Resumable: after every batch, FILE.load-state records how far the file is
settled (every row before that byte offset acknowledged or rejected). Running
the same command again resumes there; `--restart` starts over. Rows of
batches in flight when a load stopped are written again, which last-write-
wins makes harmless.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from pairdb.client import Client, ClientError, Unavailable
from pairdb.kernel.keyspace import MAX_BATCH_ITEMS, MAX_BATCH_VALUE_BYTES

BATCH_ITEMS = MAX_BATCH_ITEMS // 2
# Value bytes per batch: well under the call's limit, so a batch is never refused for its size.
BATCH_BYTES = MAX_BATCH_VALUE_BYTES // 4
RETRIES = 5
STATE_SUFFIX = ".load-state"
REJECTED_SUFFIX = ".rejected.jsonl"


class LoadFailed(Exception):
    """The cluster kept refusing rows it should take (UNAVAILABLE): the load stopped, resumable."""


@dataclass(frozen=True, slots=True)
class Row:
    line: int
    tenant_id: str
    key: str
    value: bytes


@dataclass(frozen=True, slots=True)
class Rejected:
    line: int
    reason: str
    text: str


@dataclass
class Batch:
    rows: list[Row] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    end_offset: int = 0
    value_bytes: int = 0


@dataclass
class LoadReport:
    loaded: int = 0
    rejected: int = 0
    resumed_from: int = 0
    seconds: float = 0.0
    rejected_path: Path | None = None


def detect_format(path: Path, explicit: str | None) -> str:
    if explicit:
        return explicit
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    raise ValueError(f"cannot tell the format of {path.name}: name it .jsonl or .csv, or pass --format")


def parse_json_line(number: int, text: str) -> Row | Rejected:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return Rejected(number, f"not JSON: {exc.msg}", text)
    if not isinstance(obj, dict):
        return Rejected(number, "not a JSON object", text)
    tenant, key = obj.get("tenant", obj.get("tenant_id")), obj.get("key")
    if not isinstance(tenant, str) or not isinstance(key, str):
        return Rejected(number, 'needs string fields "tenant" and "key"', text)
    if isinstance(obj.get("value"), str):
        return Row(number, tenant, key, obj["value"].encode())
    if isinstance(obj.get("value_base64"), str):
        try:
            return Row(number, tenant, key, base64.b64decode(obj["value_base64"], validate=True))
        except ValueError:
            return Rejected(number, '"value_base64" is not valid base64', text)
    return Rejected(number, 'needs a string "value" (or "value_base64")', text)


def parse_csv_line(number: int, text: str) -> Row | Rejected | None:
    """A row, a rejection, or None for the header row."""
    try:
        fields = next(csv.reader(io.StringIO(text)))
    except (csv.Error, StopIteration) as exc:
        return Rejected(number, f"not CSV: {exc}", text)
    if [f.strip().lower() for f in fields] == ["tenant", "key", "value"]:
        return None
    if len(fields) != 3:
        return Rejected(number, f"needs 3 columns (tenant,key,value), has {len(fields)}", text)
    return Row(number, fields[0], fields[1], fields[2].encode())


def batches(path: Path, fmt: str, start: int) -> Iterator[Batch]:
    """The file from byte offset start, cut into batches; each knows the offset after its last line."""
    parse = parse_json_line if fmt == "jsonl" else parse_csv_line
    with path.open("rb") as f:
        f.seek(start)
        number = _line_number(path, start)
        batch = Batch(end_offset=start)
        while raw := f.readline():
            number += 1
            batch.end_offset += len(raw)
            text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if not text.strip():
                continue
            parsed = parse(number, text)
            if isinstance(parsed, Rejected):
                batch.rejected.append(parsed)
            elif parsed is not None:
                batch.rows.append(parsed)
                batch.value_bytes += len(parsed.value)
            if len(batch.rows) >= BATCH_ITEMS or batch.value_bytes >= BATCH_BYTES:
                yield batch
                batch = Batch(end_offset=batch.end_offset)
        if batch.rows or batch.rejected or batch.end_offset > start:
            yield batch


def _line_number(path: Path, offset: int) -> int:
    """Lines before offset (offsets recorded in the state file are always at a line start)."""
    lines = 0
    with path.open("rb") as f:
        while offset > 0:
            chunk = f.read(min(offset, 1 << 20))
            if not chunk:
                break
            lines += chunk.count(b"\n")
            offset -= len(chunk)
    return lines


class Loader:
    def __init__(
        self,
        client: Client,
        path: Path,
        fmt: str,
        *,
        consistency: str = "QUORUM",
        concurrency: int = 4,
        restart: bool = False,
        out: TextIO = sys.stdout,
    ) -> None:
        self._client = client
        self._path = path
        self._fmt = fmt
        self._consistency = consistency
        self._concurrency = concurrency
        self._restart = restart
        self._out = out
        self._state = path.with_name(path.name + STATE_SUFFIX)
        self._rejected_path = path.with_name(path.name + REJECTED_SUFFIX)
        self._size = path.stat().st_size
        self.report = LoadReport()

    async def run(self) -> LoadReport:
        start = 0 if self._restart else self._resume_offset()
        self.report.resumed_from = start
        if start:
            print(f"resuming {self._path.name} at byte {start:,} of {self._size:,}", file=self._out)
        started = time.monotonic()
        # Batches settle out of order; the state advances over the longest settled prefix.
        settled: dict[int, int] = {}  # batch number -> its end offset
        next_to_record = 0
        source = enumerate(batches(self._path, self._fmt, start))
        reading = asyncio.Lock()  # one reader of the file at a time, off the event loop
        rejected = self._rejected_path.open("w" if start == 0 else "a", encoding="utf-8")
        progress = _Progress(self._out, self._size, started)
        try:

            async def worker() -> None:
                nonlocal next_to_record
                while True:
                    async with reading:
                        item = await asyncio.to_thread(next, source, None)
                    if item is None:
                        return
                    number, batch = item
                    await self._send(batch, rejected)
                    settled[number] = batch.end_offset
                    offset = None
                    while next_to_record in settled:
                        offset = settled.pop(next_to_record)
                        next_to_record += 1
                    if offset is not None:
                        self._record(offset)
                        progress.show(offset, self.report)

            await asyncio.gather(*(worker() for _ in range(self._concurrency)))
        finally:
            rejected.close()
            self.report.seconds = time.monotonic() - started
            progress.done()
        if self.report.rejected:
            self.report.rejected_path = self._rejected_path
        else:
            self._rejected_path.unlink(missing_ok=True)
        self._state.unlink(missing_ok=True)  # the whole file is settled: a new run starts over
        return self.report

    async def _send(self, batch: Batch, rejected: TextIO) -> None:
        rows = batch.rows
        for attempt in range(RETRIES + 1):
            results = await self._client.put_many(
                [(r.tenant_id, r.key, r.value) for r in rows], self._consistency
            )
            retry: list[Row] = []
            for row, result in zip(rows, results, strict=True):
                if isinstance(result, Unavailable):
                    retry.append(row)
                elif isinstance(result, ClientError):
                    reason = f"{result.code.name}: {result.message}"
                    batch.rejected.append(Rejected(row.line, reason, f"{row.tenant_id}/{row.key}"))
                else:
                    self.report.loaded += 1
            if not retry:
                break
            if attempt == RETRIES:
                raise LoadFailed(
                    f"{len(retry)} rows (from line {retry[0].line}) were refused as UNAVAILABLE "
                    f"{RETRIES + 1} times; the cluster cannot take writes now. Run the same command "
                    "again to resume"
                )
            rows = retry
            await asyncio.sleep(min(0.1 * 2**attempt, 2.0))
        for r in sorted(batch.rejected, key=lambda r: r.line):
            record = {"line": r.line, "error": r.reason}
            if r.text:
                record["text"] = r.text
            rejected.write(json.dumps(record) + "\n")
        rejected.flush()
        self.report.rejected += len(batch.rejected)

    def _resume_offset(self) -> int:
        try:
            state = json.loads(self._state.read_text())
        except (OSError, ValueError):
            return 0
        offset = int(state.get("offset", 0))
        # Only the same file: a file that shrank or was replaced starts over.
        if state.get("size") != self._size or not 0 <= offset <= self._size:
            return 0
        return offset

    def _record(self, offset: int) -> None:
        tmp = self._state.with_name(self._state.name + ".tmp")
        tmp.write_text(json.dumps({"offset": offset, "size": self._size}))
        os.replace(tmp, self._state)


class _Progress:
    """A progress bar on a terminal, a line every few seconds otherwise."""

    WIDTH = 30
    EVERY = 5.0

    def __init__(self, out: TextIO, size: int, started: float) -> None:
        self._out, self._size, self._started = out, max(size, 1), started
        self._tty = out.isatty()
        self._last = 0.0
        self._shown = False

    def show(self, offset: int, report: LoadReport) -> None:
        now = time.monotonic()
        if not self._tty and now - self._last < self.EVERY:
            return
        self._last = now
        share = offset / self._size
        rate = report.loaded / max(now - self._started, 1e-9)
        filled = int(self.WIDTH * share)
        line = (
            f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {share:6.1%}  {report.loaded:,} keys  "
            f"{rate:,.0f} keys/s  {report.rejected:,} rejected"
        )
        print(f"\r{line}" if self._tty else line, end="" if self._tty else "\n", file=self._out, flush=True)
        self._shown = True

    def done(self) -> None:
        if self._tty and self._shown:
            print(file=self._out)
