"""Run aiohttp servers in a background thread with their own event loop.

Tests may block the main thread (e.g. while skopeo runs) or run their own loop; helper
servers therefore live on a private loop in a daemon thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from aiohttp import web

__all__ = ["LoopThread", "ServedApp"]

T = TypeVar("T")


class LoopThread:
    """An event loop running forever in a daemon thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                pending = asyncio.all_tasks(self.loop)
                for task in pending:
                    task.cancel()
                if pending:
                    self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 30) -> T:
        """Run ``coro`` on the thread's loop and wait for its result (from another thread)."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("LoopThread.run() called from its own thread")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)


class ServedApp:
    """An aiohttp ``Application`` served on 127.0.0.1 (random port) from a :class:`LoopThread`."""

    def __init__(
        self, app: web.Application, *, name: str, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.thread = LoopThread(name)
        self._runner: web.AppRunner | None = None
        try:
            self.port = self.thread.run(self._start(app, ssl_context))
        except BaseException:
            self.thread.stop()
            raise

    async def _start(self, app: web.Application, ssl_context: ssl.SSLContext | None) -> int:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        self._runner = runner
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def stop(self) -> None:
        if self.thread.loop.is_closed():
            return
        with contextlib.suppress(Exception):
            self.thread.run(self._stop(), timeout=10)
        self.thread.stop()
