"""The fake upstream in a child process (``python -m satsrouter_dev.fake_upstream``)."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Self, Unpack

import orjson

from satsrouter_dev.fake_core import DIALECTS, JSON_TYPE, Behaviour, Dialect, check_behaviour


class FakeUpstreamProcess:
    """The same server in a child process, isolated from the caller's event loop."""

    def __init__(
        self,
        port: int | None = None,
        api_key: str | None = None,
        *,
        host: str = "127.0.0.1",
        defaults: Behaviour | None = None,
        startup_timeout: float = 15.0,
        dialect: Dialect = "openai",
    ) -> None:
        self.host = host
        self.port = port or 0
        self.api_key = api_key
        if dialect not in DIALECTS:
            raise ValueError(f"dialect must be one of {DIALECTS}")
        self.dialect = dialect
        self.defaults = check_behaviour(defaults or {})
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def root(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        """Spawn the server and return once it answers HTTP."""
        cmd = [
            sys.executable,
            "-m",
            "satsrouter_dev.fake_upstream",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--dialect",
            self.dialect,
        ]
        if self.api_key is not None:
            cmd += ["--api-key", self.api_key]
        if self.defaults:
            cmd += ["--behaviour", json.dumps(self.defaults)]
        env = dict(os.environ)
        # Works from any cwd, installed or not: put our source tree first.
        src = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env)
        self._proc = proc
        try:
            self.port = self._read_port(proc, time.monotonic() + self.startup_timeout)
            self._wait_answering(time.monotonic() + self.startup_timeout)
        except BaseException:
            self.stop()
            raise

    def _read_port(self, proc: subprocess.Popen[bytes], deadline: float) -> int:
        assert proc.stdout is not None
        # The child prints one "listening on <url>" line once bound (so port 0 is race-free).
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        line = proc.stdout.readline().decode() if ready else ""
        if not line.startswith("fake upstream listening on "):
            raise RuntimeError(f"fake upstream did not start (exit code {proc.poll()})")
        return int(line.strip().rsplit(":", 1)[1].split("/", 1)[0])

    def _wait_answering(self, deadline: float) -> None:
        while True:
            try:
                self._call("GET", "/_stats")
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def stop(self) -> None:
        """Terminate the child (SIGTERM, then SIGKILL after 5 s)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def configure(self, **behaviour: Unpack[Behaviour]) -> None:
        """Merge behaviour into the child's control state."""
        self._call("POST", "/_control", dict(behaviour))

    def reset(self) -> None:
        self._call("POST", "/_control/reset", {})

    def set_models(self, models: list[dict[str, Any]]) -> None:
        self._call("POST", "/_control/models", models)

    @property
    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/_stats")
        return result

    def _call(self, method: str, path: str, payload: object = None) -> Any:
        data = None if payload is None else orjson.dumps(payload)
        req = urllib.request.Request(self.root + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", JSON_TYPE)
        with urllib.request.urlopen(req, timeout=5) as resp:
            return orjson.loads(resp.read())
