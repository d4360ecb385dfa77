"""The real client programs the compatibility tests run: pinned, installed locally, run bounded.

`tests/clients/package.json` and its `package-lock.json` pin Claude Code and the Node.js
`openai` SDK exactly; `make test-tools` runs `npm ci` there (and installs Node.js, npm and
curl from Debian when missing). `ensure_installed` repeats the `npm ci` when the install is
missing or older than the lock, so running `pytest` alone works too.

Every program runs in its own process group with a deadline; the whole group is killed
when it ends or overruns, so nothing it started outlives the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CLIENTS = Path(__file__).parent / "clients"
NODE_MODULES = CLIENTS / "node_modules"
CLAUDE = NODE_MODULES / ".bin" / "claude"
# npm writes this after a complete install: older than the lock means the pins changed.
INSTALLED = NODE_MODULES / ".package-lock.json"

# Claude Code's documented switches for telemetry, error reports, auto-update and other
# traffic that is not the API itself (there is no internet here; nothing should try).
CLAUDE_QUIET = {
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
}


def pinned() -> dict[str, str]:
    """npm package → exact version, from `tests/clients/package.json`."""
    deps: dict[str, str] = json.loads((CLIENTS / "package.json").read_text())["dependencies"]
    return deps


def ensure_installed() -> None:
    """Node.js, npm and curl present; the pinned npm packages installed from the lock."""
    missing = [tool for tool in ("node", "npm", "curl") if shutil.which(tool) is None]
    assert not missing, f"{', '.join(missing)} not found: `make test-tools` installs them"
    lock = CLIENTS / "package-lock.json"
    if not INSTALLED.exists() or INSTALLED.stat().st_mtime < lock.stat().st_mtime:
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=CLIENTS, check=True, timeout=900
        )
    assert CLAUDE.exists(), f"{CLAUDE} missing after npm ci"


@dataclasses.dataclass(frozen=True)
class Finished:
    """A program's exit status and output."""

    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        """Exit status and the ends of both outputs, for assertion messages."""
        return (
            f"exit {self.returncode}\nstdout: {self.stdout[-3000:]}\nstderr: {self.stderr[-3000:]}"
        )

    def json(self) -> dict[str, Any]:
        """stdout as one JSON object."""
        data = json.loads(self.stdout)
        assert isinstance(data, dict), self.describe()
        return data


async def run(
    argv: list[str], *, cwd: Path, env: Mapping[str, str], limit_s: float = 120.0
) -> Finished:
    """Run `argv` to completion (stdin empty); AssertionError if it overruns `limit_s` seconds."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit_s)
    except TimeoutError:
        raise AssertionError(f"{argv[0]} did not finish within {limit_s:.0f} s") from None
    finally:
        # The group is the program and anything it spawned (start_new_session above).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
    assert proc.returncode is not None
    return Finished(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


def base_env(home: Path) -> dict[str, str]:
    """A clean environment: PATH, a throwaway HOME, nothing else of the caller's."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8"}


async def claude(
    prompt: str,
    *args: str,
    base_url: str,
    credentials: Mapping[str, str],
    cwd: Path,
    home: Path,
    limit_s: float = 120.0,
) -> Finished:
    """`claude -p PROMPT --output-format json ARGS` as the seed configures it.

    `ANTHROPIC_BASE_URL` is `base_url`; `credentials` is `ANTHROPIC_AUTH_TOKEN` or
    `ANTHROPIC_API_KEY`. HOME and the config dir are `home`, so no user's settings,
    sessions or logins are read or written.
    """
    env = {
        **base_env(home),
        "CLAUDE_CONFIG_DIR": str(home / ".claude"),
        "ANTHROPIC_BASE_URL": base_url,
        **credentials,
        **CLAUDE_QUIET,
    }
    argv = [str(CLAUDE), "-p", prompt, "--output-format", "json", *args]
    return await run(argv, cwd=cwd, env=env, limit_s=limit_s)
