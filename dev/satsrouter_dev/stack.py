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
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

from satsrouter_dev.fake_upstream import Behaviour, FakeUpstreamProcess
from satsrouter_dev.mint import LocalMint, free_port

NODE_READY_TIMEOUT_S = 60.0
NODE_STOP_TIMEOUT_S = 15.0


@dataclasses.dataclass(frozen=True, slots=True)
class Stack:
    """Where the running parts answer."""

    mint_url: str
    upstream_url: str  # includes /v1, as the node's UPSTREAM_BASE_URL
    node_url: str  # without /v1
    node_log: Path
    node_pid: int = 0  # with --workers > 1, the supervisor; the workers are its children
    fake_url: str = ""  # the Python fake upstream (the same as upstream_url without a front)
    mint_log: Path | None = None  # the mint's stdout, uvicorn access lines included
    # Every node process, in start order; with a balancer, node_url is the balancer's and
    # node_log/node_pid are the first node's.
    nodes: tuple[NodeProcess, ...] = ()
    database_url: str = ""  # the nodes' shared DATABASE_URL; "" for each node's own SQLite


@dataclasses.dataclass(frozen=True, slots=True)
class NodeProcess:
    """A running `satsrouter serve`."""

    url: str
    log: Path
    pid: int


def answers(url: str) -> bool:
    """Whether `url` answers 200 within a second."""
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


def _ready(url: str, log_path: Path, workers: int) -> bool:
    if workers > 1 and b"workers ready" not in _read(log_path):
        return False  # one worker answering is not all of them listening
    return answers(f"{url}/v1/models")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


@contextlib.contextmanager
def node_process(
    workdir: Path,
    mint_url: str,
    upstream_url: str,
    workers: int = 1,
    settings: dict[str, str] | None = None,
    source: Path | None = None,
) -> Iterator[NodeProcess]:
    """Run `satsrouter serve` on a free port until the block ends; `settings` adds variables.

    `source`: a checkout whose `satsrouter` package runs instead of the installed one (the
    bench's A/B baseline), with the same interpreter and dependencies.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = workdir / "node.log"
    env = {
        **(settings or {}),
        # The demo and the bench send far more than the seed's 60 requests a minute per key;
        # the environment may still set limits (e.g. to measure what counting costs).
        "RATE_LIMIT": "off",
        "MAX_CONCURRENT_PER_KEY": "0",
        **os.environ,
        "UPSTREAM_BASE_URL": upstream_url,
        "CASHU_MINTS": mint_url,
        "DATA_DIR": str(workdir / "node"),
        "BTC_USD_PRICE": "100000",
        "LOG_LEVEL": "WARNING",
    }
    if source is not None:
        # first on sys.path, ahead of the editable install's finder
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "satsrouter", "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workers", str(workers)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd, env=env, cwd=source, stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + NODE_READY_TIMEOUT_S
        while not _ready(url, log_path, workers):
            if proc.poll() is not None:
                raise RuntimeError(f"the node exited ({proc.returncode}):\n{log_tail(log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the node did not answer within {NODE_READY_TIMEOUT_S:.0f} s")
            time.sleep(0.1)
        yield NodeProcess(url, log_path, proc.pid)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=NODE_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


Front = Callable[[str], AbstractContextManager[str]]
# Runs a load balancer in front of the nodes' URLs; yields the URL clients use instead.
Balancer = Callable[[list[str]], AbstractContextManager[str]]


@contextlib.contextmanager
def running_stack(
    workdir: Path,
    upstream_defaults: Behaviour,
    *,
    workers: int = 1,
    front: Front | None = None,
    settings: dict[str, str] | None = None,
    nodes: int = 1,
    balancer: Balancer | None = None,
) -> Iterator[Stack]:
    """Mint, fake upstream and node(s) on 127.0.0.1; all stopped when the block ends.

    `front(fake_url)`, if given, runs something in front of the fake upstream (the bench's
    nginx) and yields the URL the node should use instead. `nodes` > 1 starts that many
    nodes, each with its own data directory and log (`workdir/nodes/<i>/`), sharing whatever
    `settings` give them (a `DATABASE_URL`); `balancer(node_urls)`, needed then, runs in
    front of them and its URL becomes the stack's `node_url`.
    """
    if nodes < 1 or (nodes > 1 and balancer is None):
        raise ValueError("running_stack: nodes >= 1, and several nodes need a balancer")
    with contextlib.ExitStack() as stack:
        mint = stack.enter_context(LocalMint(workdir=workdir / "mint"))
        fake = stack.enter_context(FakeUpstreamProcess(defaults=upstream_defaults))
        upstream_url = stack.enter_context(front(fake.url)) if front else fake.url
        running: list[NodeProcess] = []
        for i in range(nodes):
            # One node keeps the layout it always had (workdir/node.log, workdir/node/).
            home = workdir if nodes == 1 else workdir / "nodes" / str(i + 1)
            home.mkdir(parents=True, exist_ok=True)
            running.append(
                stack.enter_context(node_process(home, mint.url, upstream_url, workers, settings))
            )
        node_url = running[0].url
        if balancer is not None:
            node_url = stack.enter_context(balancer([n.url for n in running]))
        yield Stack(
            mint_url=mint.url,
            upstream_url=upstream_url,
            node_url=node_url,
            node_log=running[0].log,
            node_pid=running[0].pid,
            fake_url=fake.url,
            mint_log=mint.log_path,
            nodes=tuple(running),
            database_url=(settings or {}).get("DATABASE_URL", ""),
        )
