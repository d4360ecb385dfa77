"""The benchmark's fast fake upstream: nginx answering canned OpenAI replies from memory.

nginx cannot read a JSON body, so the reply is chosen by request headers, which the node
passes on to its upstream unchanged:

- `Accept: text/event-stream` → the canned 20-chunk SSE stream (with usage and [DONE]);
- `X-Bench-Upstream: slow` → proxied, unbuffered, to the Python fake upstream, which
  can pause between chunks (for the "no buffering" check);
- anything else → the canned non-streaming chat completion.

The canned bodies are captured once from the Python fake upstream, so their schema is
exactly the one the test suite uses.

`nginx_balancer` is the other nginx the bench runs: a load balancer in front of several
nodes (`--nodes`), shaped as deploy/nginx.conf.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from satsrouter_dev.mint import free_port
from satsrouter_dev.stack import answers

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
SLOW_HEADER = "X-Bench-Upstream"
SLOW_VALUE = "slow"
STREAM_ACCEPT = "text/event-stream"
REPLY_FILES = {"models": "models.json", "chat": "chat.json", "stream": "stream.sse"}


def nginx_binary() -> str | None:
    """nginx's path (Debian installs it in /usr/sbin, often not on a user's PATH)."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def _post(url: str, body: dict[str, Any], accept: str | None = None) -> bytes:
    headers = {"Content-Type": "application/json"}
    if accept:
        headers["Accept"] = accept
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(req, timeout=10) as resp:
        data: bytes = resp.read()
        return data


def capture_replies(fake_url: str, chat_body: dict[str, Any]) -> dict[str, bytes]:
    """Models list, chat completion and stream, as the Python fake upstream renders them."""
    fast = {**chat_body, "fake": {"chunk_delay_ms": 0, "latency_ms": 0}}
    with urllib.request.urlopen(f"{fake_url}/models", timeout=10) as resp:
        models: bytes = resp.read()
    stream_body = {**fast, "stream": True, "stream_options": {"include_usage": True}}
    return {
        "models": models,
        "chat": _post(f"{fake_url}/chat/completions", {**fast, "stream": False}),
        "stream": _post(f"{fake_url}/chat/completions", stream_body, STREAM_ACCEPT),
    }


def _preamble(workdir: Path) -> str:
    """What both configurations start with: one worker, no access log, files in `workdir`
    (the `http` block stays open)."""
    tmp = workdir / "tmp"
    return f"""
daemon off;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;"""


def render_config(workdir: Path, port: int, slow_port: int) -> str:
    """nginx.conf: one worker, no access log, keep-alive without limits, canned replies.

    The replies are static files in `workdir/replies` (nginx keeps them in its page cache).
    The static module refuses POST with 405; `error_page 405 =200 $uri` re-serves the same
    file as a GET: the usual way to answer POSTs with a file.
    """
    replies = workdir / "replies"
    return (
        _preamble(workdir)
        + f"""
    client_body_buffer_size 1m;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    server_tokens off;
    upstream slow {{ server 127.0.0.1:{slow_port}; keepalive 16; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {replies};
        open_file_cache max=16;
        open_file_cache_valid 1h;
        location = /v1/models {{
            default_type application/json;
            try_files /models.json =500;
        }}
        location = /v1/chat/completions {{
            if ($http_{SLOW_HEADER.lower().replace("-", "_")} = "{SLOW_VALUE}") {{
                rewrite ^ /_slow last;
            }}
            if ($http_accept ~* "event-stream") {{
                rewrite ^ /stream.sse last;
            }}
            rewrite ^ /chat.json last;
        }}
        location = /chat.json {{
            internal;
            default_type application/json;
            error_page 405 =200 $uri;
        }}
        location = /stream.sse {{
            internal;
            default_type text/event-stream;
            add_header Cache-Control no-cache;
            error_page 405 =200 $uri;
        }}
        location = /_slow {{
            internal;
            proxy_pass http://slow/v1/chat/completions;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 60s;
        }}
    }}
}}
"""
    )


def render_balancer_config(workdir: Path, port: int, node_urls: list[str]) -> str:
    """nginx.conf for the load balancer in front of several nodes (deploy/nginx.conf's shape).

    Round robin, keep-alive to the nodes, unbuffered (streams pass as the node writes
    them), no access log, one worker: on a small machine the nodes need the cores.
    """
    servers = "\n".join(
        f"        server {url.removeprefix('http://')} max_fails=3 fail_timeout=10s;"
        for url in node_urls
    )
    return (
        _preamble(workdir)
        + f"""
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    server_tokens off;
    upstream satsrouter_nodes {{
{servers}
        keepalive 64;
        keepalive_requests 10000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        client_max_body_size 8m;
        large_client_header_buffers 4 32k;
        location / {{
            proxy_pass http://satsrouter_nodes;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_buffering off;
            proxy_cache off;
            proxy_read_timeout 900s;
            proxy_send_timeout 900s;
            proxy_connect_timeout 5s;
            proxy_next_upstream error timeout;
            proxy_next_upstream_tries 2;
        }}
    }}
}}
"""
    )


@contextlib.contextmanager
def nginx_upstream(slow_url: str, replies: dict[str, bytes]) -> Iterator[str]:
    """Run nginx on a free 127.0.0.1 port until the block ends; yields its base URL (/v1)."""
    slow_port = int(slow_url.rsplit(":", 1)[1].split("/", 1)[0])
    with _workdir() as workdir:
        (workdir / "replies").mkdir()
        for name, filename in REPLY_FILES.items():
            (workdir / "replies" / filename).write_bytes(replies[name])
        port = free_port()
        conf = render_config(workdir, port, slow_port)
        url = f"http://127.0.0.1:{port}/v1"
        with _running(workdir, conf, f"{url}/models"):
            yield url


@contextlib.contextmanager
def nginx_balancer(node_urls: list[str]) -> Iterator[str]:
    """nginx balancing over `node_urls` until the block ends; yields its URL (no /v1)."""
    with _workdir() as workdir:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        try:
            with _running(
                workdir, render_balancer_config(workdir, port, node_urls), f"{url}/v1/models"
            ):
                yield url
        finally:
            # What the balancer saw go wrong (a node refusing or cutting a connection) is
            # gone with its temp dir: say it before.
            if found := balancer_errors(workdir / "error.log"):
                print(found, file=sys.stderr)


def balancer_errors(log: Path) -> str | None:
    """The error lines of nginx's log (none: None), counted, the last few quoted."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None
    bad = [line for line in text.splitlines() if re.search(r"\[(error|crit|alert|emerg)\]", line)]
    if not bad:
        return None
    return f"{len(bad)} error lines in the balancer's log; last ones:\n" + "\n".join(bad[-5:])


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    # Its own world-readable temp dir: started as root, nginx's worker runs as `nobody`,
    # which must reach the replies (a caller's 0700 temp dir would hide them).
    workdir = Path(tempfile.mkdtemp(prefix="satsrouter-bench-nginx-"))
    workdir.chmod(0o755)
    try:
        (workdir / "tmp").mkdir()
        yield workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def _running(workdir: Path, config: str, ready_url: str) -> Iterator[None]:
    """nginx with `config` from `workdir` until the block ends, once `ready_url` answers."""
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx is not installed: `make bench` or `apt-get install nginx-light`")
    conf = workdir / "nginx.conf"
    conf.write_text(config)
    log = (workdir / "stderr.log").open("wb")
    # -p: relative paths and the default log land in our temp dir, not /var/log/nginx.
    cmd = [binary, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not answers(ready_url):
            if proc.poll() is not None:
                raise RuntimeError(f"nginx exited ({proc.returncode}): {_tail(workdir)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not answer within {START_TIMEOUT_S:.0f} s")
            time.sleep(0.05)
        yield
    finally:
        log.close()
        if proc.poll() is None:
            # SIGQUIT is nginx's graceful stop; the master stops its worker.
            proc.send_signal(signal.SIGQUIT)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _tail(workdir: Path) -> str:
    texts = []
    for name in ("stderr.log", "error.log"):
        with contextlib.suppress(OSError):
            texts.append((workdir / name).read_text(errors="replace")[-2000:])
    return "\n".join(texts) or "(no log)"
