"""The wheel is the node only, and a plain install of it works.

The wheel is built from this checkout, checked to carry none of the test doubles, and
installed into a fresh virtual environment without the dev extras (pinned by
constraints.txt, as `make` installs). Every command that install offers is run: `--help` of
each, `migrate`, and `serve` up to its first `/v1/models` answer.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from killable import KillableNode
from satsrouter_dev.fake_upstream import FakeUpstream
from satsrouter_dev.mint import LocalMint

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "satsrouter"
INSTALL_WITHIN_S = 900

# A plain install as an operator first runs it: on its default database, SQLite in DATA_DIR.
pytestmark = pytest.mark.sqlite_only("a plain install on its default database, SQLite")


def _run(*cmd: str | Path, cwd: Path = ROOT, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=INSTALL_WITHIN_S,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, f"{cmd}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


class Installed:
    """The built wheel and a fresh venv where only it (and its pinned deps) is installed."""

    def __init__(self, wheel: Path, venv: Path) -> None:
        self.wheel = wheel
        self.venv = venv

    @property
    def command(self) -> Path:
        return self.venv / "bin" / "satsrouter"


@pytest_asyncio.fixture(scope="module")
async def installed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Installed]:
    work = tmp_path_factory.mktemp("wheel")
    # Built from a clean copy of what the wheel is made of: setuptools never prunes an
    # in-tree build/, so a module moved since an earlier build would be packaged again.
    source = work / "source"
    for name in ("pyproject.toml", "README.md"):
        source.mkdir(exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / PACKAGE, source / PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
    # The venv's own setuptools builds it (no isolated build env to download).
    await asyncio.to_thread(
        _run,
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        work / "dist",
        source,
    )
    (wheel,) = (work / "dist").glob("satsrouter-*.whl")
    venv = work / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    await asyncio.to_thread(_run, base, "-m", "venv", venv)
    pip = venv / "bin" / "pip"
    await asyncio.to_thread(_run, pip, "install", "-q", "-c", ROOT / "constraints.txt", wheel)
    yield Installed(wheel, venv)


async def test_the_wheel_carries_no_test_doubles(installed: Installed) -> None:
    names = zipfile.ZipFile(installed.wheel).namelist()
    code = [n for n in names if n.endswith(".py")]
    assert any(n == "satsrouter/app.py" for n in code)
    assert all(n.startswith("satsrouter/") for n in code), code
    assert not [n for n in code if "fake" in n or "testing" in n or "demo" in n]
    # The dashboard's files are package data: every one in the source is in the wheel.
    static = ROOT / PACKAGE / "http" / "static"
    shipped = {f"{PACKAGE}/http/static/{f.name}" for f in static.iterdir() if f.is_file()}
    assert {"index.html", "app.js", "style.css"} <= {f.name for f in static.iterdir()}
    assert shipped <= set(names), shipped - set(names)
    # Nor any dev-only dependency.
    (metadata,) = [n for n in names if n.endswith("/METADATA")]
    requires = {
        re.split(r"[\s<>=!~\[;]", line.removeprefix("Requires-Dist:").strip())[0]
        for line in zipfile.ZipFile(installed.wheel).read(metadata).decode().splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    }
    assert "cashu" in requires
    assert not requires & {"openai", "anthropic", "pytest", "hypothesis"}


async def test_every_command_answers_help(installed: Installed) -> None:
    out = await asyncio.to_thread(_run, installed.command, "--help")
    commands = {"serve", "migrate", "wallet"}
    assert all(c in out for c in commands) and "demo" not in out
    for command in commands:
        await asyncio.to_thread(_run, installed.command, command, "--help")


async def test_migrate_and_serve_from_a_plain_install(
    installed: Installed, local_mint: LocalMint, upstream: FakeUpstream, tmp_path: Path
) -> None:
    node = KillableNode(tmp_path, local_mint.url, upstream.url)
    node.command = [str(installed.command)]
    await asyncio.to_thread(_run, *node.command, "migrate", cwd=tmp_path, env=node.env)
    await node.start()
    try:
        async with httpx.AsyncClient(base_url=node.url) as http:
            models = (await http.get("/v1/models")).json()["data"]
            # The dashboard, served from the installed package's data.
            page = await http.get("/admin")
            script = await http.get("/admin/static/app.js")
        assert "openai/gpt-4o-mini" in {m["id"] for m in models}
        assert page.status_code == 200 and "/admin/static/app.js" in page.text
        assert script.status_code == 200 and "showLogin" in script.text
    finally:
        await node.stop()
