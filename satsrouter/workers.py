"""`serve --workers N`: N uvicorn processes on one port (SO_REUSEPORT), one shared database.

Each worker is a fresh (spawned, not forked) interpreter that builds its own Node, so each
has its own instance id for reservation heartbeats, its own connection pools and its own
background loops (all compare-and-set against the database, so running them N times is
safe; the fleet-wide ones run on the one worker holding their lease, store/leases.py).
The kernel spreads new connections over the workers' sockets; one accept queue shared by
all workers would instead wake them all and let one take most connections.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.connection
import signal
import socket
import sys
import time
from multiprocessing.synchronize import Event
from types import FrameType
from typing import Any

READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _worker(host: str, port: int, options: dict[str, Any], ready: Event) -> None:
    import uvicorn

    from satsrouter.app import create_app
    from satsrouter.http.connections import connection_options
    from satsrouter.logs import setup_logging
    from satsrouter.settings import Settings

    settings = Settings.from_env()
    setup_logging(settings.log_level, settings.log_format)
    sock = _bind(host, port)
    config = uvicorn.Config(
        create_app(settings, freeze_heap=True), **options, **connection_options(settings)
    )
    server = uvicorn.Server(config)

    async def serve() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        # `started` is set once the lifespan (Node.start) finished and the socket listens;
        # uvicorn offers no event for it.
        while not server.started and not task.done():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if server.started:
            ready.set()
        await task

    config.setup_event_loop()  # uvloop, as uvicorn.run would
    asyncio.run(serve())


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def serve_workers(count: int, host: str, port: int, options: dict[str, Any]) -> int:
    """Run `count` workers until SIGINT/SIGTERM (0) or until one of them dies (1)."""
    # Holding the port (bound, never listening) resolves port 0 once for all workers and
    # fails early if another program owns it; connections only go to listening sockets.
    holder = _bind(host, port)
    port = holder.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    events = [ctx.Event() for _ in range(count)]
    procs = [
        ctx.Process(target=_worker, args=(host, port, options, ev), name=f"satsrouter-worker-{i}")
        for i, ev in enumerate(events)
    ]
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    code = 1
    try:
        for proc in procs:
            proc.start()
        _wait_ready(procs, events)
        print(f"satsrouter: {count} workers ready on {host}:{port}", file=sys.stderr, flush=True)
        # Returns as soon as any worker exits: a half-dead node is worse than a dead one.
        multiprocessing.connection.wait([p.sentinel for p in procs])
        print("satsrouter: a worker exited; stopping the others", file=sys.stderr, flush=True)
    except _Stop:
        code = 0
    except RuntimeError as exc:
        print(f"satsrouter: {exc}", file=sys.stderr, flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _stop_all(procs)
        holder.close()
    return code


def _wait_ready(procs: list[Any], events: list[Event]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not all(ev.is_set() for ev in events):
        if any(not p.is_alive() for p in procs):
            raise RuntimeError("a worker exited during start-up")
        if time.monotonic() > deadline:
            raise RuntimeError(f"workers not ready within {READY_TIMEOUT_S:.0f} s")
        time.sleep(0.05)


def _stop_all(procs: list[Any]) -> None:
    for proc in procs:
        if proc.is_alive():
            proc.terminate()  # SIGTERM: uvicorn's graceful shutdown, Node.stop
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join()
