"""A node in a child process on one data directory: started, crashed, killed, restarted.

Crash tests need a real process death (no `finally`, no clean shutdown): either the node's
own fault injection (`FAULT_CRASH_AT`, which `os._exit`s at a named money step) or SIGKILL
from outside. Each restart runs on the same database and wallet, as an operator's would.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import databases
import httpx
from satsrouter_dev.mint import free_port
from satsrouter_dev.stack import log_tail

READY_WITHIN_S = 60.0
# On Postgres a node cannot see a predecessor's process lock (another machine may share the
# database): a dead one is known by its heartbeat stopping this long (SWEEP_INTERVAL beats).
PG_DEAD_AFTER_S = 2.0


class KillableNode:
    """`satsrouter serve` on a fixed port and data directory, one process at a time."""

    def __init__(self, workdir: Path, mint_url: str, upstream_url: str, **env: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "UPSTREAM_BASE_URL": upstream_url,
            "UPSTREAM_API_KEY": "upstream-secret",
            "CASHU_MINTS": mint_url,
            "DATA_DIR": str(workdir / "node"),
            "BTC_USD_PRICE": "100000",
            "LOG_LEVEL": "WARNING",
            "SWEEP_INTERVAL": "0.5",
            "INVOICE_POLL_INTERVAL": "0.2",
            "LNURL_ALLOW_HTTP": "true",
            # Many requests per key: no request limits unless a test asks for them.
            "RATE_LIMIT": "off",
            "MAX_CONCURRENT_PER_KEY": "0",
            **env,
        }
        self.data_dir = Path(self.env["DATA_DIR"])
        if "DATABASE_URL" not in env:
            # On a Postgres run, this data directory's own database (else its SQLite file).
            self.env["DATABASE_URL"] = databases.database_url_for(self.data_dir)
        self.on_postgres = self.env["DATABASE_URL"].startswith("postgresql")
        if self.on_postgres:
            self.env.setdefault("INSTANCE_DEAD_AFTER", str(PG_DEAD_AFTER_S))
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.command = [sys.executable, "-m", "satsrouter"]  # or an installed `satsrouter`

    @property
    def log(self) -> Path:
        return self.workdir / f"node-{self.starts}.log"

    async def start(self, crash_at: str = "") -> None:
        """Start the node (armed to exit at `crash_at`) and wait until it answers."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        if self.on_postgres and self.proc is not None:
            await self._predecessor_dead()
        self.starts += 1
        env = {**self.env, "FAULT_CRASH_AT": crash_at}
        self.proc = self._spawn(env)
        deadline = time.monotonic() + READY_WITHIN_S
        async with httpx.AsyncClient() as http:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"node exited at start:\n{log_tail(self.log)}")
                try:
                    if (await http.get(f"{self.url}/v1/info", timeout=1)).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "node did not start in time"
                await asyncio.sleep(0.05)

    async def _predecessor_dead(self) -> None:
        """Wait until the last process's heartbeat says it is dead (it retires at a clean stop).

        On SQLite its freed lock says so at once and the next start takes over its work
        (recovery at start); on Postgres that is the heartbeat's silence, so the restart
        waits for it, and the crash tests check the same recovery at start on both.
        """
        dead_after = float(self.env["INSTANCE_DEAD_AFTER"])
        deadline = time.monotonic() + dead_after + 30
        while True:
            ((last,),) = self.query("SELECT max(heartbeat_at) FROM instances")
            if last is None or float(last) < time.time() - dead_after - 0.2:
                return
            assert time.monotonic() < deadline, "the dead node's heartbeat did not stop"
            await asyncio.sleep(0.1)

    def _spawn(self, env: dict[str, str]) -> subprocess.Popen[bytes]:
        cmd = [*self.command, "serve", "--port", str(self.port)]
        with self.log.open("wb") as log:
            return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)

    async def wait_exit(self, within: float = 30.0) -> int:
        """The exit status of the node process, once it has exited."""
        assert self.proc is not None
        deadline = time.monotonic() + within
        while self.proc.poll() is None:
            assert time.monotonic() < deadline, "node did not exit in time"
            await asyncio.sleep(0.02)
        return int(self.proc.returncode)

    def kill(self) -> None:
        """SIGKILL: the process dies wherever it is."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    async def stop(self) -> None:
        """A clean stop (SIGTERM), or a kill if it does not stop in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            await asyncio.to_thread(self.proc.wait, 15)
        except subprocess.TimeoutExpired:
            self.kill()

    async def audit(self) -> tuple[int, str]:
        """`satsrouter wallet audit` on this node's data: exit status and report."""
        return await self.cli("wallet", "audit")

    async def cli(self, *args: str) -> tuple[int, str]:
        """`satsrouter <args>` with this node's settings: exit status and output."""
        proc = await asyncio.create_subprocess_exec(
            *self.command,
            *args,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        return int(proc.returncode or 0), out.decode(errors="replace")

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Read the node's database (SQLite or Postgres), whether or not the node runs."""
        return databases.rows(self.database_url, sql, *params)

    @property
    def database_url(self) -> str:
        """The database this node runs on."""
        return databases.effective_url(self.env.get("DATABASE_URL", ""), self.data_dir)

    def check_books(self) -> None:
        """I1 for every account, nothing reserved, nothing left pending in the wallet."""
        for account_id, balance, reserved in self.query(
            "SELECT id, balance_msat, reserved_msat FROM accounts"
        ):
            (journal,) = self.query(
                "SELECT coalesce(sum(amount_msat), 0) FROM journal WHERE account_id = ?",
                account_id,
            )[0]
            assert balance == journal, f"account {account_id}: {balance} != journal {journal}"
            assert reserved == 0, f"account {account_id} has {reserved} msat reserved"
        assert self.query("SELECT id FROM wallet_ops WHERE state = 'pending'") == []
