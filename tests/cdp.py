"""A small Chrome DevTools Protocol driver for browser tests: headless Chromium, one page.

    async with await Chromium.launch() as browser:
        await browser.navigate("http://127.0.0.1:8233/")
        await browser.wait_for("document.body.innerText.includes('Workflows')")
        await browser.screenshot(Path("page.png"))

Chromium (Debian's `chromium` package, /usr/bin/chromium) runs in its own session, with its
profile and its $HOME in a fresh temp dir; close() kills the whole process group and removes
the directory. CDP is
spoken over a websocket (the `websockets` package): one connection to the browser endpoint
that Chromium prints on stderr, and a flattened session attached to its first page.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

__all__ = ["CHROMIUM", "FRAME_TEXTS", "CdpError", "Chromium"]

CHROMIUM = Path("/usr/bin/chromium")

# Known to work headless in a container; the background/component/sync flags stop Chromium
# from reaching out to Google's services all the time (there is no network to reach).
_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
]
_LISTENING = "DevTools listening on "
# The innerText of each same-origin <iframe>'s body, as a JavaScript array expression. Pages that
# render Markdown in iframes (the Temporal UI does) keep that text out of document.body.innerText.
FRAME_TEXTS = (
    "[...document.querySelectorAll('iframe')].map(f => {"
    " try { return f.contentDocument && f.contentDocument.body ? f.contentDocument.body.innerText : ''; }"
    " catch (e) { return ''; } })"
)
_STDERR_TAIL_LINES = 30
_POLL_INTERVAL = 0.2


class CdpError(RuntimeError):
    """Chromium did not start, or a CDP command answered with an error."""


class Chromium:
    """One headless Chromium and a CDP session on its page. Create with `await Chromium.launch()`."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        temp_dir: Path,
        stderr_tail: deque[str],
        stderr_task: asyncio.Task[None],
    ) -> None:
        self._proc = proc
        self._temp_dir = temp_dir
        self._stderr_tail = stderr_tail
        self._stderr_task = stderr_task
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._session_id: str | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._closed = False

    @property
    def pid(self) -> int:
        return self._proc.pid

    @classmethod
    async def launch(
        cls, binary: Path = CHROMIUM, window_size: tuple[int, int] = (1400, 1000), timeout: float = 30.0
    ) -> Chromium:
        """Start Chromium, connect to its DevTools endpoint and attach to its blank page."""
        temp_dir = Path(tempfile.mkdtemp(prefix="pairdb-chromium-"))
        # Crash reports, caches and the NSS database go under $HOME / $XDG_*, not --user-data-dir:
        # point those into the temp dir too, so nothing is left in the real home directory.
        home = temp_dir / "home"
        env = {
            **os.environ,
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_CACHE_HOME": str(home / ".cache"),
        }
        try:
            proc = await asyncio.create_subprocess_exec(
                str(binary),
                *_FLAGS,
                f"--user-data-dir={temp_dir / 'profile'}",
                f"--window-size={window_size[0]},{window_size[1]}",
                "about:blank",
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=env,
                # Its own process group: close() kills the renderers and helpers with it.
                start_new_session=True,
            )
        except BaseException:
            shutil.rmtree(temp_dir, ignore_errors=True)
            raise
        assert proc.stderr is not None
        tail: deque[str] = deque(maxlen=_STDERR_TAIL_LINES)
        endpoint: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        stderr_task = asyncio.ensure_future(_drain_stderr(proc.stderr, tail, endpoint))
        browser = cls(proc, temp_dir, tail, stderr_task)
        try:
            try:
                url = await asyncio.wait_for(endpoint, timeout)
            except TimeoutError:
                raise CdpError(f"Chromium printed no DevTools endpoint within {timeout}s") from None
            await asyncio.wait_for(browser._attach(url), timeout)
        except BaseException as exc:
            await browser.close()
            if isinstance(exc, CdpError):
                raise CdpError(f"{exc}\nlast lines of Chromium's stderr:\n{browser.stderr_tail()}") from exc
            raise
        return browser

    async def __aenter__(self) -> Chromium:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def stderr_tail(self) -> str:
        return "\n".join(self._stderr_tail) or "(nothing)"

    # -- CDP ------------------------------------------------------------------------------------

    async def _attach(self, url: str) -> None:
        # proxy=None: the endpoint is on loopback, never go through an HTTP(S)_PROXY from the env.
        # max_size=None: screenshots arrive as one large base64 message.
        self._ws = await connect(url, proxy=None, max_size=None, ping_interval=None)
        self._reader = asyncio.ensure_future(self._read())
        targets = await self.send("Target.getTargets", session=False)
        pages = [t for t in targets["targetInfos"] if t["type"] == "page"]
        if pages:
            target_id = pages[0]["targetId"]
        else:
            target_id = (await self.send("Target.createTarget", {"url": "about:blank"}, session=False))[
                "targetId"
            ]
        attached = await self.send(
            "Target.attachToTarget", {"targetId": target_id, "flatten": True}, session=False
        )
        self._session_id = attached["sessionId"]
        await self.send("Page.enable")
        await self.send("Runtime.enable")

    async def _read(self) -> None:
        assert self._ws is not None
        error: BaseException = CdpError("the DevTools connection closed")
        try:
            async for raw in self._ws:
                message = json.loads(raw)
                future = self._pending.pop(message.get("id", -1), None)
                if future is not None and not future.done():
                    future.set_result(message)
                # Events (messages without an id) are not needed by anything here.
        except ConnectionClosed:
            pass
        except Exception as exc:
            error = exc
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(error)
            self._pending.clear()

    async def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session: bool = True,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Send one CDP command (to the page's session unless session=False); returns its result."""
        if self._ws is None or self._reader is None or self._reader.done():
            raise CdpError(f"{method}: not connected to Chromium")
        message: dict[str, Any] = {"id": next(self._ids), "method": method, "params": params or {}}
        if session:
            if self._session_id is None:
                raise CdpError(f"{method}: not attached to a page")
            message["sessionId"] = self._session_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[message["id"]] = future
        try:
            await self._ws.send(json.dumps(message))
            reply = await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(message["id"], None)
        if "error" in reply:
            raise CdpError(f"{method}: {reply['error'].get('message')} ({reply['error'].get('code')})")
        result: dict[str, Any] = reply.get("result", {})
        return result

    # -- the page -------------------------------------------------------------------------------

    async def navigate(self, url: str) -> None:
        """Load url in the page; returns once the navigation committed (not when the page is done)."""
        result = await self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise CdpError(f"navigating to {url} failed: {result['errorText']}")

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited if it is a promise)."""
        result = await self.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            description = details.get("exception", {}).get("description") or details.get("text")
            raise CdpError(f"evaluating {expression!r} threw: {description}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 30.0) -> None:
        """Poll until the expression is truthy in the page; TimeoutError with the page text if never.

        An expression that throws (say, while the page is still being replaced) counts as false.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last_error = ""
        while True:
            try:
                if await self.evaluate(expression):
                    return
                last_error = ""
            except CdpError as exc:
                last_error = str(exc)
            if loop.time() >= deadline:
                break
            await asyncio.sleep(_POLL_INTERVAL)
        try:
            text = (await self.text())[:2000]
        except CdpError as exc:
            text = f"(unavailable: {exc})"
        raise TimeoutError(
            f"timed out after {timeout}s waiting for {expression}"
            + (f" (last error: {last_error})" if last_error else "")
            + f"; page text:\n{text}"
        )

    async def text(self) -> str:
        """document.body.innerText: the page's text as rendered (hidden elements left out)."""
        value = await self.evaluate("document.body ? document.body.innerText : ''")
        return str(value or "")

    async def frame_texts(self) -> list[str]:
        """The innerText of every same-origin iframe in the page (see FRAME_TEXTS)."""
        value = await self.evaluate(FRAME_TEXTS)
        return [str(t) for t in value or []]

    async def screenshot(self, path: Path) -> Path:
        """Save a PNG of the viewport to path (parent directories created)."""
        result = await self.send("Page.captureScreenshot", {"format": "png"})
        data = base64.b64decode(result["data"])
        await asyncio.to_thread(_write, path, data)
        return path

    # -- shutdown -------------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the browser, kill anything left of its process group, remove the profile. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._ws is not None and self._reader is not None and not self._reader.done():
            with contextlib.suppress(Exception):
                await self.send("Browser.close", session=False, timeout=5)
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), 5)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._proc.wait(), 5)
        # The process group outlives its leader: renderers and helpers may still be in it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        await self._proc.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stderr_task, 5)
        self._stderr_task.cancel()
        await asyncio.to_thread(shutil.rmtree, self._temp_dir, True)


async def _drain_stderr(
    stream: asyncio.StreamReader, tail: deque[str], endpoint: asyncio.Future[str]
) -> None:
    """Read Chromium's stderr to the end (a full pipe would block it); resolve the endpoint URL."""
    while line := await stream.readline():
        text = line.decode(errors="replace").rstrip()
        tail.append(text)
        if not endpoint.done() and text.startswith(_LISTENING):
            endpoint.set_result(text[len(_LISTENING) :].strip())
    if not endpoint.done():
        endpoint.set_exception(CdpError("Chromium exited before printing its DevTools endpoint"))


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
