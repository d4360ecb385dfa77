"""A whole local stack in subprocesses: a real mint, the fake upstream and a node (demo, bench)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from satsrouter.testing.fake_upstream import Behaviour, FakeUpstreamProcess
from satsrouter.testing.mint import LocalMint, free_port

NODE_READY_TIMEOUT_S = 60.0
NODE_STOP_TIMEOUT_S = 15.0


@dataclasses.dataclass(frozen=True, slots=True)
class Stack:
    """Where the running parts answer."""

    mint_url: str
    upstream_url: str  # includes /v1, as the node's UPSTREAM_BASE_URL
    node_url: str  # without /v1
    node_log: Path


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def log_tail(path: Path, chars: int = 4000) -> str:
    """The end of a log file, or a note that there is none."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def node_process(workdir: Path, mint_url: str, upstream_url: str) -> Iterator[tuple[str, Path]]:
    """Run `satsrouter serve` on a free port until the block ends; yields (url, log path)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = workdir / "node.log"
    env = {
        **os.environ,
        "UPSTREAM_BASE_URL": upstream_url,
        "CASHU_MINTS": mint_url,
        "DATA_DIR": str(workdir / "node"),
        "BTC_USD_PRICE": "100000",
        "LOG_LEVEL": "WARNING",
    }
    cmd = [sys.executable, "-m", "satsrouter", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + NODE_READY_TIMEOUT_S
        while not _answers(f"{url}/v1/models"):
            if proc.poll() is not None:
                raise RuntimeError(f"the node exited ({proc.returncode}):\n{log_tail(log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the node did not answer within {NODE_READY_TIMEOUT_S:.0f} s")
            time.sleep(0.1)
        yield url, log_path
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=NODE_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def running_stack(workdir: Path, upstream_defaults: Behaviour) -> Iterator[Stack]:
    """Mint, fake upstream and node on 127.0.0.1; all three stopped when the block ends."""
    with contextlib.ExitStack() as stack:
        mint = stack.enter_context(LocalMint(workdir=workdir / "mint"))
        upstream = stack.enter_context(FakeUpstreamProcess(defaults=upstream_defaults))
        node_url, node_log = stack.enter_context(node_process(workdir, mint.url, upstream.url))
        yield Stack(
            mint_url=mint.url, upstream_url=upstream.url, node_url=node_url, node_log=node_log
        )
