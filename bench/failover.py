"""The failover scenario's node: two providers for the bench model, the first failing half.

"flaky" is a Python fake upstream of its own answering `500` to every other chat request
(`fail_every: 2`); "steady" is the bench's usual upstream (nginx). `[routes]` puts flaky
first, so every request tries it and every other one fails over to steady before the
client sees anything. Failures alternate with successes, so the circuit breaker
(`CIRCUIT_FAILURES` failures in a row) does not open; openings are counted from the log.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path

from satsrouter_dev.fake_upstream import Behaviour, FakeUpstreamProcess
from satsrouter_dev.stack import NodeProcess, Stack, node_process

from bench.load import MODEL

FLAKY = "flaky"
STEADY = "steady"
FAIL_EVERY = 2
_OPENED = f"circuit of {FLAKY} opened"


def flaky_behaviour(completion_tokens: int) -> Behaviour:
    """A fake upstream failing every other request with a 500, replying as nginx's canned
    completion otherwise (same usage, so both providers charge the same price)."""
    return {
        "completion_tokens": completion_tokens,
        "latency_ms": 0,
        "chunk_delay_ms": 0,
        "fail": "500",
        "fail_every": FAIL_EVERY,
    }


def providers_toml(flaky_url: str, steady_url: str) -> str:
    """The providers file: flaky and steady, both selling MODEL, flaky tried first."""
    return (
        f'[[provider]]\nname = "{FLAKY}"\nbase_url = "{flaky_url}"\ndialect = "openai"\n\n'
        f'[[provider]]\nname = "{STEADY}"\nbase_url = "{steady_url}"\ndialect = "openai"\n\n'
        f'[routes]\n"{MODEL}" = ["{FLAKY}", "{STEADY}"]\n'
    )


def circuit_openings(log: Path) -> int:
    """How often the node's log says flaky's circuit opened (0: it stayed in rotation)."""
    try:
        return log.read_text(errors="replace").count(_OPENED)
    except OSError:
        return 0


@contextlib.contextmanager
def failover_node(
    workdir: Path, stack: Stack, completion_tokens: int, workers: int = 1
) -> Iterator[Stack]:
    """The flaky fake upstream and a second node (own data dir and log) with both providers.

    Yields the bench's stack with this node's URL, log and pid; both processes are stopped
    when the block ends.
    """
    home = workdir / "failover"
    home.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as running:
        flaky = running.enter_context(
            FakeUpstreamProcess(defaults=flaky_behaviour(completion_tokens))
        )
        path = home / "providers.toml"
        path.write_text(providers_toml(flaky.url, stack.upstream_url), encoding="utf-8")
        node: NodeProcess = running.enter_context(
            node_process(
                home,
                stack.mint_url,
                stack.upstream_url,
                workers,
                # node_process always sets UPSTREAM_BASE_URL; naming that provider "steady"
                # lets the file's steady (same URL) replace it, so there are two providers.
                settings={"PROVIDERS_PATH": str(path), "UPSTREAM_NAME": STEADY},
            )
        )
        yield dataclasses.replace(stack, node_url=node.url, node_log=node.log, node_pid=node.pid)
