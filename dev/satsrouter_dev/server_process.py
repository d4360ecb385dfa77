"""What the tests' throwaway servers share: a process in its own temporary directory on a
free loopback port, waited for with a deadline, and stopped (its directory deleted) at the
end of a `with` block."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

from satsrouter_dev.mint import free_port

STOP_TIMEOUT_S = 15.0


class ServerProcess:
    """A server process; subclasses say how to start it (`start`) and what it is called."""

    name = "server"
    log_name = "server.log"

    def __init__(self, prefix: str) -> None:
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix=prefix))
        self.log_path = self.workdir / self.log_name
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the process and wait until it answers."""
        raise NotImplementedError

    def wait_until(self, answers: Callable[[], bool], timeout_s: float, pause_s: float) -> None:
        """Wait for `answers()`, failing early if the process exits (then it is stopped)."""
        deadline = time.monotonic() + timeout_s
        while not answers():
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not start in time:\n{self.log_tail()}")
            time.sleep(pause_s)

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL) and delete its directory."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        """The end of the process's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

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
