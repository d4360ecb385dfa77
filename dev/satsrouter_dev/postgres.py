"""A throwaway Postgres cluster (Debian's `postgresql` binaries) on 127.0.0.1, for tests.

`initdb` makes a cluster in a temporary directory, `pg_ctl` runs it on a free loopback port
with its unix socket in that directory too, and `cleanup()` stops it and deletes everything.
Nothing is shared with a system cluster (`/var/lib/postgresql`), and nothing outlives it.

Postgres refuses to run as root, so when we are root the server and `initdb` run as an
unprivileged user (`postgres`, made by the Debian package, else `nobody`) via `runuser`,
and the temporary directory is handed to that user. Clients (`psql`, the node) connect over
TCP with a random password, so they may run as anyone.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from satsrouter_dev.mint import free_port

_PG_ROOT = Path("/usr/lib/postgresql")
_START_TIMEOUT_S = 60
_STOP_TIMEOUT_S = 30
_USER = "satsrouter"
_NAME = re.compile(r"[a-z_][a-z0-9_]*")


def postgres_bin_dir() -> Path | None:
    """The newest installed Postgres server's bin directory (Debian layout), if any."""

    def version(bin_dir: Path) -> tuple[int, ...]:  # /usr/lib/postgresql/15/bin -> (15,)
        return tuple(int(part) for part in re.findall(r"\d+", bin_dir.parent.name))

    found = [p.parent for p in _PG_ROOT.glob("*/bin/initdb") if (p.parent / "pg_ctl").exists()]
    return max(found, key=version, default=None)


def _server_user() -> pwd.struct_passwd | None:
    """Who runs the server: nobody special unless we are root, whom Postgres refuses."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root, but there is no `postgres` or `nobody` user to run as")


def _temp_base(server_user: pwd.struct_passwd | None) -> str | None:
    """Where to make the cluster's directory: the usual temp dir, if the server can reach it.

    A root whose TMPDIR sits under a private directory (e.g. /root) would hand the server a
    directory it cannot enter; /tmp is world-traversable.
    """
    if server_user is None:
        return None
    base = Path(tempfile.gettempdir()).resolve()
    reachable = all(p.stat().st_mode & stat.S_IXOTH for p in (base, *base.parents))
    return None if reachable else "/tmp"


class LocalPostgres:
    """One Postgres cluster in a temporary directory, listening on 127.0.0.1 only."""

    def __init__(self, bin_dir: Path | None = None) -> None:
        found = bin_dir or postgres_bin_dir()
        if found is None:
            raise RuntimeError(
                f"no Postgres server under {_PG_ROOT}/*/bin: `make test` installs Debian's "
                "`postgresql` package (or: sudo apt-get install postgresql)"
            )
        self.bin_dir = found
        self.port = free_port()
        self.password = secrets.token_hex(16)
        self._user = _server_user()
        self.workdir = Path(tempfile.mkdtemp(prefix="satsrouter-pg-", dir=_temp_base(self._user)))
        self.data_dir = self.workdir / "data"
        self.socket_dir = self.workdir / "sock"
        self.log_path = self.workdir / "server.log"
        self._started = False
        self.start_seconds = 0.0  # what start() took: initdb and the server's start

    def _server_cmd(self, *argv: str) -> list[str]:
        cmd = [str(self.bin_dir / argv[0]), *argv[1:]]
        if self._user is not None:
            return ["runuser", "-u", self._user.pw_name, "--", *cmd]
        return cmd

    def _run_server_tool(self, *argv: str) -> None:
        result = subprocess.run(
            self._server_cmd(*argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_START_TIMEOUT_S + 30,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{argv[0]} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
                f"\nserver log:\n{self.log_tail()}"
            )

    def start(self) -> None:
        """initdb, then start the server and wait until it accepts connections."""
        if self._started:
            return
        began = time.monotonic()
        self.socket_dir.mkdir()
        pwfile = self.workdir / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        if self._user is not None:
            for path in (self.workdir, self.socket_dir, pwfile):
                os.chown(path, self._user.pw_uid, self._user.pw_gid)
        self._run_server_tool(
            "initdb",
            "--pgdata",
            str(self.data_dir),
            "--username",
            _USER,
            "--pwfile",
            str(pwfile),
            # Only the owner (or root) can reach the socket in our 0700 directory.
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--no-locale",
            # A throwaway cluster: initdb's own fsyncs would only slow the start.
            "--no-sync",
        )
        pwfile.unlink()
        # Settings go in the file rather than on pg_ctl's command line: no quoting of paths.
        # fsync and synchronous_commit stay at their defaults (on): the node checks them.
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# satsrouter tests\n"
                "listen_addresses = '127.0.0.1'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.socket_dir}'\n"
                # Each node's pool may hold 30 connections; a test can run a few nodes.
                "max_connections = 200\n"
            )
        self._started = True
        self._run_server_tool(
            "pg_ctl",
            "start",
            "--pgdata",
            str(self.data_dir),
            "--log",
            str(self.log_path),
            "--wait",
            "--timeout",
            str(_START_TIMEOUT_S),
        )
        self.start_seconds = time.monotonic() - began

    def url(self, database: str) -> str:
        """The SQLAlchemy URL a node uses for `database` (`DATABASE_URL`)."""
        return f"postgresql+asyncpg://{_USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the cluster's superuser; returns psql's unaligned output."""
        result = subprocess.run(
            [
                str(self.bin_dir / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                _USER,
                "-d",
                database,
                "-c",
                sql,
            ],
            env={**os.environ, "PGPASSWORD": self.password, "PGCONNECT_TIMEOUT": "10"},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout.strip()

    def create_database(self, name: str) -> str:
        """Create an empty database; returns its URL."""
        if not _NAME.fullmatch(name):
            raise ValueError(f"not a plain database name: {name!r}")
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's log, for error messages."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop the server (fast shutdown: connections are cut); safe to call twice."""
        if not self._started:
            return
        self._started = False
        argv = ["pg_ctl", "stop", "--pgdata", str(self.data_dir), "--wait"]
        try:
            self._run_server_tool(*argv, "--mode=fast", "--timeout", str(_STOP_TIMEOUT_S))
        except (RuntimeError, subprocess.TimeoutExpired):
            # Stuck, or never started (a failed start): immediate mode waits for nothing, and
            # its own failure must not hide the error that brought us here.
            subprocess.run(
                self._server_cmd(*argv, "--mode=immediate"),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=_STOP_TIMEOUT_S,
                check=False,
            )

    def restart(self) -> None:
        """Restart the server (fast: every connection is cut) on the same port and data."""
        argv = ["pg_ctl", "restart", "--pgdata", str(self.data_dir), "--mode=fast", "--wait"]
        self._run_server_tool(*argv, "--timeout", str(_START_TIMEOUT_S), "-l", str(self.log_path))

    def cleanup(self) -> None:
        """Stop the server and delete its directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalPostgres:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
