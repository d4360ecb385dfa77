"""A real nutshell mint (fake Lightning backend) and a user's wallet, for tests and demos."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from satsrouter.ecash._cashu import TokenV3, TokenV4, Wallet

_READY_TIMEOUT_S = 30.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LocalMint:
    """A nutshell mint subprocess on 127.0.0.1 whose fake backend pays every invoice."""

    def __init__(
        self,
        port: int | None = None,
        input_fee_ppk: int = 0,
        workdir: Path | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.input_fee_ppk = input_fee_ppk
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="satsrouter-mint-"))
        self.extra_env = dict(extra_env or {})
        self.log_path = self.workdir / "mint.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def _env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            # the parent's cashu/mint settings must not leak into the child
            if not k.startswith(("MINT_", "FAKEWALLET_", "CASHU_", "TOR", "DEBUG"))
        }
        env.update(
            HOME=str(self.workdir),
            MINT_BACKEND_BOLT11_SAT="FakeWallet",
            MINT_PRIVATE_KEY=secrets.token_hex(32),
            MINT_LISTEN_HOST="127.0.0.1",
            MINT_LISTEN_PORT=str(self.port),
            MINT_DATABASE=str(self.workdir / "mintdb"),
            MINT_INPUT_FEE_PPK=str(self.input_fee_ppk),
            MINT_RATE_LIMIT="FALSE",
            FAKEWALLET_DELAY_INCOMING_PAYMENT="0",
            FAKEWALLET_DELAY_OUTGOING_PAYMENT="0",
        )
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        """Start the mint and wait until /v1/keysets answers."""
        if self._proc is not None:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cashu.mint",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
                cwd=self.workdir,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.url}/v1/keysets", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        code = self._proc.poll()
        self.stop()
        state = f"exited with {code}" if code is not None else "did not answer in time"
        raise RuntimeError(f"mint on port {self.port} {state}; log tail:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Terminate the mint and wait for it; safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def cleanup(self) -> None:
        """Stop, and delete the working directory if we made it."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalMint:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


class TestWallet:
    """A user's nutshell wallet against one mint, kept in its own directory."""

    __test__ = False  # not a pytest test class

    def __init__(self, wallet: Wallet) -> None:
        self._wallet = wallet

    @classmethod
    async def create(cls, mint_url: str, dirpath: Path, unit: str = "sat") -> TestWallet:
        await asyncio.to_thread(dirpath.mkdir, parents=True, exist_ok=True)
        # nutshell prints a line about the new mnemonic: keep demo and test output clean
        with contextlib.redirect_stdout(io.StringIO()):
            wallet = await Wallet.with_db(
                mint_url.rstrip("/"), str(dirpath), name="user", unit=unit
            )
        await wallet.load_mint()
        await wallet.load_proofs()
        return cls(wallet)

    @property
    def wallet(self) -> Wallet:
        return self._wallet

    async def mint_tokens(self, amount: int, count: int = 1, legacy: bool = False) -> list[str]:
        """`count` tokens of `amount` sat each, from one paid quote."""
        w = self._wallet
        total = amount * count
        quote = await w.request_mint(total)
        parts = _binary_split(amount)
        if len(parts) * count > 999:
            # a mint request takes at most ~1000 outputs; fall back to several quotes
            half = count // 2
            first = await self.mint_tokens(amount, half, legacy)
            return first + await self.mint_tokens(amount, count - half, legacy)
        proofs = await w.mint(total, quote_id=quote.quote, split=parts * count)
        tokens: list[str] = []
        for i in range(count):
            chunk = proofs[i * len(parts) : (i + 1) * len(parts)]
            tokens.append(await w.serialize_proofs(chunk, legacy=legacy))
            # the user hands these over: they are no longer this wallet's to spend
            await w.set_reserved_for_send(chunk, reserved=True)
        return tokens

    async def redeem(self, token: str) -> int:
        """Receive a token into this wallet; returns the amount kept after fees."""
        proofs = await self._proofs_of(token)
        keep, _ = await self._wallet.redeem(proofs)
        return sum(p.amount for p in keep)

    async def reserialize(self, token: str) -> str:
        """The same proofs in the other serialisation (V4 <-> V3)."""
        proofs = await self._proofs_of(token)
        return str(await self._wallet.serialize_proofs(proofs, legacy=token.startswith("cashuB")))

    async def _proofs_of(self, token: str) -> list[Any]:
        if token.startswith("cashuB"):
            proofs = list(TokenV4.deserialize(token).proofs)
        else:
            proofs = list(TokenV3.deserialize(token).proofs)
        # V4 carries 8-byte keyset ids; the mint only knows the full ones
        await self._wallet._expand_short_keyset_ids(proofs)
        return proofs

    async def balance(self) -> int:
        await self._wallet.load_proofs(reload=True)
        return int(self._wallet.available_balance.amount)


def _binary_split(amount: int) -> list[int]:
    if amount <= 0:
        raise ValueError("amount must be positive")
    return [1 << i for i in range(amount.bit_length()) if amount >> i & 1]
