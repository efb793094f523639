"""Network faults on loopback: a TCP proxy in front of a server whose link can misbehave.

Used by the chaos harness (bench/chaos.py) and by tests. Each storage node can
sit behind one; coordinators and the worker then reach the node only through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random


class TcpProxy:
    """Forwards 127.0.0.1:port to a target, with switchable faults.

    - latency: seconds added before each chunk is forwarded (both directions);
    - blocked: every connection dropped and new ones refused (node unreachable);
    - one_way: forward client->server but drop server->client (a one-direction partition);
    - hold(): bytes in flight stay in the proxy, both ways, until release() (a partition that heals
      with the requests still on the wire: a query hangs, then completes late);
    - drop_connections(): cut the open connections once; new ones work.
    """

    def __init__(self, target_host: str, target_port: int, port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.port = port
        self.latency = 0.0
        self.jitter = 0.0
        self.blocked = False
        self.one_way = False
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self._rng = random.Random(port)

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        self.drop_connections()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def heal(self) -> None:
        self.latency = self.jitter = 0.0
        self.blocked = self.one_way = False
        self.release()

    def hold(self) -> None:
        """Keep every byte from here on in the proxy until release(); connections stay open."""
        self._flowing.clear()

    def release(self) -> None:
        self._flowing.set()

    def block(self) -> None:
        """Drop every open connection and refuse new ones until heal()."""
        self.blocked = True
        self.drop_connections()

    def unblock(self) -> None:
        self.blocked = False

    def drop_connections(self) -> None:
        for writer in list(self._links):
            writer.close()
        self._links.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.blocked:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._links.update((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer, upstream=True), self._pipe(up_reader, writer, upstream=False)
        )

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upstream: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                if self.blocked:
                    break
                if self.latency or self.jitter:
                    await asyncio.sleep(self.latency + self._rng.random() * self.jitter)
                if self.one_way and not upstream:
                    continue  # replies vanish: requests arrive, answers never do
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._links.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()
