"""A throwaway Nostr relay (PyPI `nostr-relay`, run by uvicorn) on 127.0.0.1, for tests.

The relay's own dependencies conflict with the node's pins, so it runs from its own venv,
`<the running venv>/nostr-relay`, made on first use from the pinned
`nostr_relay_requirements.txt` (PyPI only) and remade when those pins change; `make
test-tools` makes it ahead of the tests. Each relay keeps its events in a SQLite file in its
own temporary directory, listens on a free loopback port, checks every event's signature
(`is_signed`), and is stopped, and its directory deleted, on `stop()`.

    python -m satsrouter_dev.nostr_relay --install   # make (or check) the venv only
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

from satsrouter_dev.server_process import ServerProcess

REQUIREMENTS = Path(__file__).with_name("nostr_relay_requirements.txt")
_START_TIMEOUT_S = 60.0
_CONFIG = """\
DEBUG: false
relay_name: satsrouter test relay
storage:
  sqlalchemy.url: sqlite+aiosqlite:///{db}
  validators:
    - nostr_relay.validators.is_not_too_large
    - nostr_relay.validators.is_signed
gunicorn:
  bind: 127.0.0.1:{port}
  workers: 1
  loglevel: warning
  reload: false
authentication:
  enabled: false
verification:
  nip05_verification: disabled
"""


def relay_venv() -> Path:
    """Where the relay's venv lives: beside the running venv's packages."""
    return Path(sys.prefix) / "nostr-relay"


def ensure_relay_installed() -> Path:
    """The relay's program, installing its venv first if missing or its pins changed."""
    venv = relay_venv()
    program = venv / "bin" / "nostr-relay"
    stamp = venv / ".installed"
    wanted = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    # Both halves of the suite may start at once: one installs, the other waits for it.
    with open(venv.with_name("nostr-relay.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if program.exists() and stamp.exists() and stamp.read_text() == wanted:
            return program
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "--no-deps", "-r", str(REQUIREMENTS)], check=True)
        stamp.write_text(wanted)
    return program


def _answers(port: int) -> bool:
    """Whether the relay answers its NIP-11 document."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/", headers={"Accept": "application/nostr+json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


class LocalRelay(ServerProcess):
    """One `nostr-relay` process listening on 127.0.0.1 only."""

    name = "nostr-relay"
    log_name = "relay.log"

    def __init__(self) -> None:
        self.program = ensure_relay_installed()
        super().__init__("satsrouter-nostr-relay-")

    @property
    def url(self) -> str:
        """The relay's websocket URL (`RELAYS`)."""
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the relay and wait (with a deadline) until it answers."""
        config = self.workdir / "config.yaml"
        db = self.workdir / "events.sqlite3"
        config.write_text(_CONFIG.format(db=db, port=self.port))
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [str(self.program), "-c", str(config), "serve", "--use-uvicorn"],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait_until(lambda: _answers(self.port), _START_TIMEOUT_S, 0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m satsrouter_dev.nostr_relay")
    parser.add_argument("--install", action="store_true", help="make the relay's venv only")
    args = parser.parse_args(argv)
    if not args.install:
        parser.print_help()
        return 2
    print(ensure_relay_installed())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
