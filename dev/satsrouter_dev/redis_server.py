"""A throwaway Redis (Debian's `redis-server`) on 127.0.0.1, for tests of shared rate limits.

It runs on a free loopback port in its own temporary directory, keeps nothing on disk
(`--save ''`, no append-only file) and is stopped, and its directory deleted, on `stop()`.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

from satsrouter_dev.server_process import ServerProcess

_START_TIMEOUT_S = 30.0


def redis_server_binary() -> str | None:
    """The `redis-server` program, if installed."""
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class LocalRedis(ServerProcess):
    """One `redis-server` process listening on 127.0.0.1 only."""

    name = "redis-server"
    log_name = "redis.log"

    def __init__(self) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError(
                "no redis-server: `make test` installs Debian's `redis-server` package "
                "(or: sudo apt-get install redis-server)"
            )
        self.binary = binary
        super().__init__("satsrouter-redis-")

    @property
    def url(self) -> str:
        """`REDIS_URL` for this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait (with a deadline) until it answers PING."""
        cmd = [
            self.binary,
            "--save",
            "",
            "--appendonly",
            "no",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.workdir),
            "--logfile",
            str(self.log_path),
        ]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.wait_until(lambda: _answers_ping(self.port), _START_TIMEOUT_S, 0.02)
