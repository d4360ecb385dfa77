"""The deployment examples in deploy/ are what they claim to be (docs/OPERATIONS.md).

What is checked, and what is not:

- `deploy/nginx.conf` passes `nginx -t` (Debian's nginx, which `make test-tools` installs),
  included in a minimal main configuration as `conf.d` would include it, with only its two
  certificate paths pointed at a self-signed certificate made here. `-t` parses and loads
  everything (certificates included) but binds no port and proxies nothing. Then the same
  file runs in front of a test node, its addresses moved to loopback (the three upstream
  servers become the one node; listen ports free ones; IPv6 listens dropped): TLS, a paid
  stream, /metrics answered 404 by nginx, a body over MAX_BODY_BYTES refused by nginx, a
  forged X-Forwarded-For not escaping the per-IP limit. Not run: the long read timeouts,
  several nodes, failover between them.
- `deploy/nginx-onion.conf` (the hidden service through nginx) passes `nginx -t` next to
  `nginx.conf`, and runs in front of a test node fed what Tor sends with
  `HiddenServiceExportCircuitID haproxy` (a PROXY protocol line per connection, written
  here by hand; no Tor runs): each circuit counted as its own client, a forged
  X-Forwarded-For ignored, a connection without the PROXY line refused.
- Every variable in `deploy/env.example`, set or commented out, is a declared setting; the
  secret ones are marked "(secret)" and no others are; the file reads the same through
  systemd's rules and through `sh` (the docs source it with `sh` for the CLI), and the
  node accepts it, as it is and with every commented setting switched on.
- `deploy/satsrouter.service`'s ExecStart is accepted by `satsrouter`'s own parser, and the
  unit passes `systemd-analyze verify` with ExecStart pointed at this checkout's
  `satsrouter` (the only change). Where `systemd-analyze` is not installed that last part is
  not checked (said in the test's output); the rest of the test still runs. Nothing here
  starts the service: the hardening options are not exercised under systemd.
"""

from __future__ import annotations

import asyncio
import datetime
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import openai
from conftest import NodeFactory, eventually
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from satsrouter_dev.mint import TestWallet, free_port

from satsrouter.cli import build_parser
from satsrouter.settings import Settings, declared_settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
_ASSIGNMENT = re.compile(r"^(#?)([A-Z][A-Z0-9_]*)=(.*)$")
_SIZE = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "node.example")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _directives(conf: str, name: str) -> list[str]:
    """The arguments of every `name …;` directive in an nginx file (comments left out)."""
    found = []
    for line in conf.splitlines():
        words = line.split("#", 1)[0].strip()
        if words.startswith(name + " "):
            found.append(words.removeprefix(name).strip().rstrip(";").strip())
    return found


def _env_lines() -> list[tuple[bool, str, str, str]]:
    """(active, name, value as systemd reads it, the comments just above) per assignment."""
    out = []
    comment = ""
    for line in (DEPLOY / "env.example").read_text().splitlines():
        match = _ASSIGNMENT.match(line)
        if match:
            raw = match.group(3)
            value = raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] == '"' else raw
            out.append((not match.group(1), match.group(2), value, comment))
            comment = ""
        elif line.startswith("#"):
            comment += line + "\n"  # the comment block above an assignment
        else:
            comment = ""
    return out


def _nginx_prefix(tmp_path: Path, site: str) -> Path:
    """A prefix directory with a main configuration including `site` as conf.d would, and
    `site`'s certificate paths pointed at a self-signed certificate; returns the main file."""
    cert, key = _self_signed(tmp_path)
    assert len(_directives(site, "ssl_certificate")) == 1
    assert len(_directives(site, "ssl_certificate_key")) == 1
    site = re.sub(r"(?m)^(\s*ssl_certificate) \S+;", rf"\1 {cert};", site)
    site = re.sub(r"(?m)^(\s*ssl_certificate_key) \S+;", rf"\1 {key};", site)
    (tmp_path / "satsrouter.conf").write_text(site)
    temp_paths = "\n".join(
        f"    {kind}_temp_path {tmp_path / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    main = tmp_path / "nginx.conf"
    main.write_text(
        f"pid {tmp_path / 'nginx.pid'};\n"
        f"error_log {tmp_path / 'error.log'};\n"
        "events {}\n"
        "http {\n"
        f"    access_log off;\n{temp_paths}\n"
        f"    include {tmp_path / 'satsrouter.conf'};\n"
        "}\n"
    )
    return main


def test_the_nginx_example_passes_nginx_t(tmp_path: Path) -> None:
    assert Path(NGINX).exists(), "nginx is missing: `make test-tools` installs nginx-light"
    main = _nginx_prefix(tmp_path, (DEPLOY / "nginx.conf").read_text())
    result = subprocess.run(
        [NGINX, "-t", "-p", str(tmp_path), "-c", str(main)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_the_nginx_example_matches_the_node() -> None:
    conf = (DEPLOY / "nginx.conf").read_text()
    (size,) = _directives(conf, "client_max_body_size")
    number, unit = re.fullmatch(r"(\d+)([kmg]?)", size.lower()).groups()  # type: ignore[union-attr]
    env = {name: value for active, name, value, _ in _env_lines() if active}
    assert int(number) * _SIZE[unit] == Settings().max_body_bytes == int(env["MAX_BODY_BYTES"])
    assert _directives(conf, "proxy_buffering") == ["off"]  # SSE
    (read_timeout,) = _directives(conf, "proxy_read_timeout")
    assert int(read_timeout.removesuffix("s")) > Settings().effective_first_byte_timeout
    assert _directives(conf, "proxy_set_header").count("X-Forwarded-For $remote_addr") == 1
    assert env["TRUSTED_PROXIES"]  # the nodes believe that header only from nginx
    # No POST is ever retried on another node (it may already have been paid).
    assert all("non_idempotent" not in d for d in _directives(conf, "proxy_next_upstream"))
    # /metrics is answered by nginx itself, never passed to a node.
    metrics = re.search(r"location = /metrics \{(.*?)\}", conf, re.S)
    assert metrics is not None and "proxy_pass" not in metrics.group(1)
    assert "return 404" in metrics.group(1)


def test_every_variable_in_the_env_example_is_a_real_setting() -> None:
    declared = {d.env: d for _, d in declared_settings()}
    lines = _env_lines()
    names = [name for _, name, _, _ in lines]
    assert len(names) == len(set(names)), "a variable appears twice"
    assert set(names) <= set(declared), set(names) - set(declared)
    for _, name, _, comment in lines:
        marked = "(secret)" in comment
        assert marked == declared[name].secret, f"{name}: secret {declared[name].secret}"
    # The settings every operator must look at are there.
    for needed in ("UPSTREAM_API_KEY", "CASHU_MINTS", "DATA_DIR", "DATABASE_URL", "REDIS_URL"):
        assert needed in names
    for needed in ("TRUSTED_PROXIES", "PROVIDER_SECRET", "ADMIN_PASSWORD", "METRICS_TOKEN"):
        assert needed in names


def test_the_env_example_reads_the_same_in_sh_and_the_node_accepts_it(tmp_path: Path) -> None:
    lines = _env_lines()
    active = {name: value for on, name, value, _ in lines if on}
    # `set -a; . file` is how the docs run the CLI with the service's settings.
    shell = subprocess.run(
        ["sh", "-c", 'set -a; . "$0"; exec env -0', str(DEPLOY / "env.example")],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        check=True,
    )
    seen = dict(item.split("=", 1) for item in shell.stdout.decode().split("\0") if "=" in item)
    assert {name: seen.get(name) for name in active} == active
    Settings.from_env(active)
    Settings.from_env({name: value for _, name, value, _ in lines})  # all switched on


def test_the_units_exec_start_is_a_valid_serve_command(tmp_path: Path) -> None:
    unit = (DEPLOY / "satsrouter.service").read_text()
    values: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            values.setdefault(key, []).append(value)
    (exec_start,) = values["ExecStart"]
    program, *argv = shlex.split(exec_start)
    assert program == "/opt/satsrouter/.venv/bin/satsrouter"
    args = build_parser().parse_args(argv)
    assert (args.command, args.host, args.port) == ("serve", "127.0.0.1", 8000)
    assert values["EnvironmentFile"] == ["/etc/satsrouter/env"]
    assert values["User"] == ["satsrouter"] and values["NoNewPrivileges"] == ["yes"]
    assert values["ProtectSystem"] == ["strict"]
    env = {name: value for active, name, value, _ in _env_lines() if active}
    assert values["ReadWritePaths"] == [env["DATA_DIR"]]  # the node may write its database
    assert values["StateDirectory"] == ["satsrouter"] and env["DATA_DIR"].endswith("/satsrouter")

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        print("systemd-analyze is not installed: `systemd-analyze verify` not run")
        return
    ours = str(Path(sys.executable).parent / "satsrouter")
    copy = tmp_path / "satsrouter.service"
    copy.write_text(unit.replace(program, ours))
    result = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "satsrouter.service" not in result.stderr, result.stderr  # no warning about it


def _on_loopback(conf: str, node_port: int, https_port: int, http_port: int) -> str:
    """The example with its addresses moved to 127.0.0.1: the three nodes become the one
    test node, and the listening ports free ones (the IPv6 listens dropped)."""
    conf = re.sub(r"(?m)^\s*server 10\.0\.0\.1[123]:8000 .*;\n", "", conf)
    conf = conf.replace("keepalive 64;", f"server 127.0.0.1:{node_port};\n    keepalive 64;")
    conf = re.sub(r"(?m)^\s*listen \[::\]:\d+( ssl)?;\n", "", conf)
    conf = conf.replace("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;")
    return conf.replace("listen 80;", f"listen 127.0.0.1:{http_port};")


async def test_the_nginx_example_in_front_of_a_node(
    node_factory: NodeFactory, user_wallet: TestWallet, tmp_path: Path
) -> None:
    """The example running, its addresses moved to loopback (`_on_loopback`): TLS, a stream
    arriving as it is written, /metrics not passed on, the body limit at nginx, and a
    client's forged `X-Forwarded-For` not dodging the node's per-IP limits.

    The stream would arrive unbuffered even without `proxy_buffering off`: the node's
    streams carry `X-Accel-Buffering: no`. The directive is for other paths and proxies.
    """
    node = await node_factory(trusted_proxies=["127.0.0.1"], auth_failure_limit="2/minute")
    https_port, http_port = free_port(), free_port()
    site = _on_loopback(
        (DEPLOY / "nginx.conf").read_text(), urlsplit(node.url).port or 0, https_port, http_port
    )
    main = _nginx_prefix(tmp_path, site)
    nginx = await asyncio.create_subprocess_exec(
        NGINX,
        "-p",
        str(tmp_path),
        "-c",
        str(main),
        "-g",
        "daemon off;",
        stdin=subprocess.DEVNULL,
    )
    base = f"https://127.0.0.1:{https_port}"
    try:
        async with httpx.AsyncClient(base_url=base, verify=False, timeout=30) as http:

            async def answers() -> bool:
                assert nginx.returncode is None, (tmp_path / "error.log").read_text()
                try:
                    return (await http.get("/v1/info")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(answers, within=30)
            assert (await http.get("/metrics")).status_code == 404  # the node would say 401
            too_big = await http.post(
                "/v1/chat/completions",
                content=b"x" * (Settings().max_body_bytes + 1),
                headers={"content-type": "application/json"},
            )
            assert too_big.status_code == 413 and "nginx" in too_big.text  # not the node's

            # A stream's chunks reach the client as the node writes them.
            (token,) = await user_wallet.mint_tokens(100)
            api = openai.AsyncOpenAI(
                base_url=f"{base}/v1", api_key=token, max_retries=0, http_client=http
            )
            stream = await api.chat.completions.create(
                model="test/priced",
                messages=[{"role": "user", "content": "through nginx"}],
                max_tokens=20,
                stream=True,
                extra_body={"fake": {"chunk_delay_ms": 300, "completion_tokens": 6}},
            )
            arrivals, text = [], ""
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    arrivals.append(time.monotonic())
                    text += chunk.choices[0].delta.content
            assert text == "w1 w2 w3 w4 w5 w6"
            assert arrivals[-1] - arrivals[0] > 1.0  # spread over the stream, not one burst

            # Each guess claims another client; nginx replaces the header with the address it
            # saw, so the node counts every guess against that one address.
            codes = [
                (
                    await http.post(
                        "/v1/chat/completions",
                        json={"model": "test/priced", "messages": []},
                        headers={
                            "Authorization": f"Bearer sk-guess-{i}",
                            "X-Forwarded-For": f"203.0.113.{i}",
                        },
                    )
                ).status_code
                for i in range(3)
            ]
            assert codes == [401, 401, 429]
    finally:
        nginx.terminate()
        await asyncio.wait_for(nginx.wait(), 30)


def _onion_site(node_port: int, https_port: int, http_port: int, onion_port: int) -> str:
    """nginx.conf on loopback (`_on_loopback`) plus nginx-onion.conf on `onion_port`."""
    onion = (DEPLOY / "nginx-onion.conf").read_text()
    assert _directives(onion, "listen") == ["127.0.0.1:8081 proxy_protocol"]
    onion = onion.replace("listen 127.0.0.1:8081 ", f"listen 127.0.0.1:{onion_port} ")
    main = _on_loopback((DEPLOY / "nginx.conf").read_text(), node_port, https_port, http_port)
    return main + "\n" + onion


def test_the_onion_example_passes_nginx_t(tmp_path: Path) -> None:
    onion = (DEPLOY / "nginx-onion.conf").read_text()
    assert _directives(onion, "proxy_set_header").count("X-Forwarded-For $proxy_protocol_addr")
    main = _nginx_prefix(tmp_path, (DEPLOY / "nginx.conf").read_text() + "\n" + onion)
    result = subprocess.run(
        [NGINX, "-t", "-p", str(tmp_path), "-c", str(main)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


async def _as_tor(port: int, circuit: int | None, key: str, forged: str) -> int:
    """One request as Tor hands it over with `HiddenServiceExportCircuitID haproxy`: a PROXY
    protocol line naming the circuit, then the client's HTTP. The status, or 0 if refused."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if circuit is not None:  # Tor's own format: fc00:dead:beef:4dad::<gid>, port 65535
            gid = f"{circuit >> 16:x}:{circuit & 0xFFFF:x}"
            writer.write(f"PROXY TCP6 fc00:dead:beef:4dad::{gid} ::1 65535 80\r\n".encode())
        body = b'{"model": "test/priced", "messages": []}'
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: abc.onion\r\n"
            + f"Authorization: Bearer {key}\r\nX-Forwarded-For: {forged}\r\n".encode()
            + b"Content-Type: application/json\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 30)
        return int(status_line.split()[1]) if status_line else 0
    finally:
        writer.close()


async def test_the_onion_example_counts_each_tor_circuit_as_a_client(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    """nginx-onion.conf running in front of a node, fed what Tor sends: each circuit is its
    own client for the failed-authentication limit, a forged X-Forwarded-For changes
    nothing, and a connection without the PROXY line (not from Tor) is refused."""
    node = await node_factory(trusted_proxies=["127.0.0.1"], auth_failure_limit="2/minute")
    onion_port = free_port()
    site = _onion_site(urlsplit(node.url).port or 0, free_port(), free_port(), onion_port)
    main = _nginx_prefix(tmp_path, site)
    nginx = await asyncio.create_subprocess_exec(
        NGINX, "-p", str(tmp_path), "-c", str(main), "-g", "daemon off;", stdin=subprocess.DEVNULL
    )
    try:

        async def listening() -> bool:
            assert nginx.returncode is None, (tmp_path / "error.log").read_text()
            try:
                return await _as_tor(onion_port, 1, "sk-wrong-0", "198.51.100.1") == 401
            except OSError:
                return False

        await eventually(listening, within=30)
        # Circuit 1 had one failure; its second is its last, each claiming another address.
        assert await _as_tor(onion_port, 1, "sk-wrong-1", "198.51.100.2") == 401
        assert await _as_tor(onion_port, 1, "sk-wrong-2", "198.51.100.3") == 429
        # Another circuit is another client: not locked out by the first one's guesses.
        assert await _as_tor(onion_port, 2, "sk-wrong-3", "198.51.100.1") == 401
        # No PROXY line: nginx drops the connection, nothing reaches the node.
        assert await _as_tor(onion_port, None, "sk-wrong-4", "198.51.100.9") == 0
    finally:
        nginx.terminate()
        await asyncio.wait_for(nginx.wait(), 30)
