"""The deployment examples in deploy/ are what they claim to be (docs/OPERATIONS.md).

What is checked, and what is not:

- `deploy/nginx.conf` passes `nginx -t` (Debian's nginx, which `make test-tools` installs),
  included in a minimal main configuration as `conf.d` would include it, with only its two
  certificate paths pointed at a self-signed certificate made here. `-t` parses and loads
  everything (certificates included) but binds no port and proxies nothing: the behaviour
  behind each directive (SSE unbuffered, timeouts) is stated in the file, not run here.
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

import datetime
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

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


def test_the_nginx_example_passes_nginx_t(tmp_path: Path) -> None:
    assert Path(NGINX).exists(), "nginx is missing: `make test-tools` installs nginx-light"
    conf = (DEPLOY / "nginx.conf").read_text()
    cert, key = _self_signed(tmp_path)
    assert len(_directives(conf, "ssl_certificate")) == 1
    assert len(_directives(conf, "ssl_certificate_key")) == 1
    site = re.sub(r"(?m)^(\s*ssl_certificate) \S+;", rf"\1 {cert};", conf)
    site = re.sub(r"(?m)^(\s*ssl_certificate_key) \S+;", rf"\1 {key};", site)
    (tmp_path / "satsrouter.conf").write_text(site)
    temp_paths = "\n".join(
        f"    {kind}_temp_path {tmp_path / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path / 'nginx.pid'};\n"
        "events {}\n"
        "http {\n"
        f"    access_log off;\n{temp_paths}\n"
        f"    include {tmp_path / 'satsrouter.conf'};\n"
        "}\n"
    )
    result = subprocess.run(
        [NGINX, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
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
