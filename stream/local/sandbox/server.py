"""Ways to run the sandbox: on the caller's loop, in its own thread, or in the foreground."""

from __future__ import annotations

import asyncio
import signal
import threading
from types import TracebackType

from aiohttp import web

from .app import ACCOUNTS, SANDBOX, create_app
from .config import SandboxConfig
from .state import Sandbox
from .store import Store

_SHUTDOWN_TIMEOUT = 5.0


class SandboxServer:
    """The sandbox on the current event loop: `async with SandboxServer(cfg) as sb: sb.url`."""

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        self.app = create_app(self.config)
        self.url = ""
        self._runner: web.AppRunner | None = None

    @property
    def sandbox(self) -> Sandbox:
        """Everything the default account holds (store, stats, log, fault dice)."""
        return self.app[SANDBOX]

    def account(self, name: str) -> Sandbox:
        """Everything account `name` holds (`SandboxConfig.accounts`; KeyError if none)."""
        return self.app[ACCOUNTS].by_name[name]

    @property
    def store(self) -> Store:
        """The profiles, events, merges and jobs, for direct inspection."""
        return self.sandbox.store

    async def start(self) -> str:
        """Bind and serve; returns the base URL (`http://HOST:PORT`)."""
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT)
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, self.config.port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        port = runner.addresses[0][1]
        host = "127.0.0.1" if self.config.host in ("", "0.0.0.0") else self.config.host
        self.url = f"http://{host}:{port}"
        return self.url

    async def stop(self) -> None:
        """Stop serving and close every connection; queued merges, deletions and jobs are
        dropped."""
        for sandbox in self.app[ACCOUNTS]:
            sandbox.scheduler.cancel_all()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> SandboxServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


class SandboxThread:
    """The sandbox on its own thread and event loop: `with SandboxThread(cfg) as sb: sb.url`.

    For tests whose code under test runs its own loop. `store` is read from another thread:
    inspect it only while no request is in flight, or use the /sandbox/ endpoints.
    """

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.server = SandboxServer(config)
        self.url = ""
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def store(self) -> Store:
        """The default account's store (see the class note on threads)."""
        return self.server.store

    def account(self, name: str) -> Sandbox:
        """Account `name` (see the class note on threads)."""
        return self.server.account(name)

    def start(self) -> str:
        """Start the thread and wait until the server accepts connections."""
        self._thread = threading.Thread(target=self._main, name="klaviyo-sandbox", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self.url

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            self.url = await self.server.start()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            await self.server.stop()

    def stop(self) -> None:
        """Stop the server and join the thread (idempotent)."""
        if self._thread is None:
            return
        if self._loop is not None and self._stopping is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join()
        self._thread = None

    def __enter__(self) -> SandboxThread:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def run(config: SandboxConfig | None = None) -> None:
    """Serve in the foreground until SIGINT or SIGTERM (the `klaviyo-stream sandbox` command)."""
    asyncio.run(_run_forever(config or SandboxConfig()))


async def _run_forever(config: SandboxConfig) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    async with SandboxServer(config) as server:
        print(f"Klaviyo sandbox at {server.url}", flush=True)
        print(f"sandbox pages (open in a browser): {server.url}/sandbox/", flush=True)
        await stopping.wait()
