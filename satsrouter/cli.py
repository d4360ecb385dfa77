"""The `satsrouter` command: serve, migrate, wallet audit/restore, admin reset-password."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from satsrouter.logs import setup_logging
from satsrouter.settings import Settings, SettingsError


def _serve(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    setup_logging(settings.log_level, settings.log_format)
    if args.workers < 1:
        print("satsrouter: --workers must be at least 1", file=sys.stderr)
        return 2
    if args.workers == 1:
        import uvicorn

        from satsrouter.app import create_app
        from satsrouter.http.connections import connection_options

        uvicorn.run(
            create_app(settings, freeze_heap=True),
            host=args.host,
            port=args.port,
            **_uvicorn_options(args),
            **connection_options(settings),
        )
        return 0
    from satsrouter.workers import serve_workers

    # Migrations run once, here, before any worker exists; each worker's own start-up
    # migration then finds the schema current and does nothing.
    _run_migrations(settings)
    return serve_workers(args.workers, args.host, args.port, _uvicorn_options(args))


def _uvicorn_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "log_config": None,  # our handlers, with the secret filter
        "access_log": args.access_log,
        # Never uvicorn's: it believes X-Forwarded-For from 127.0.0.1 and rewrites the client
        # address the rate limits count by. TRUSTED_PROXIES decides (http/client_ip.py).
        "proxy_headers": False,
        "loop": "uvloop",  # the HTTP protocol comes from `connection_options`
        "timeout_graceful_shutdown": 10,
    }


def _run_migrations(settings: Settings) -> None:
    from satsrouter.store.engine import make_engine, migrate

    async def run() -> None:
        engine = make_engine(settings.effective_database_url)
        try:
            await migrate(engine)
        finally:
            await engine.dispose()

    asyncio.run(run())


def _migrate(_: argparse.Namespace) -> int:
    settings = Settings.from_env()
    setup_logging(settings.log_level, settings.log_format)
    _run_migrations(settings)
    print("database is up to date")
    return 0


def _wallet(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    setup_logging(settings.log_level, settings.log_format)
    return asyncio.run(_wallet_command(settings, args.action))


async def _wallet_command(settings: Settings, action: str) -> int:
    import os

    from satsrouter.billing.audit import audit
    from satsrouter.ecash.restore import PendingOperations, restore_wallet
    from satsrouter.ecash.wallet import NodeWallet
    from satsrouter.store.engine import make_engine, migrate
    from satsrouter.store.tx import make_tx_runner

    async def never_dead(instance_id: str) -> bool:
        return False  # the tools finish nobody's operations: a starting node does that

    url = settings.effective_database_url
    engine = make_engine(url)
    tx = make_tx_runner(url, engine)
    wallet = NodeWallet(
        settings.cashu_mints,
        tx,
        "cli-" + os.urandom(6).hex(),
        never_dead,
        legacy_dir=settings.data_dir,
    )
    try:
        await migrate(engine)
        await wallet.start()
        if action == "audit":
            result = await audit(tx, wallet)
            print(result.report())
            return 0 if result.ok else 1
        try:
            restored = await restore_wallet(wallet, tx)
        except PendingOperations as exc:
            print(f"satsrouter: {exc}", file=sys.stderr)
            return 1
        for r in restored:
            print(
                f"{r.mint} [{r.unit}] keyset {r.keyset_id}: {r.found} proofs found at the "
                f"mint, {r.restored} taken back ({r.amount} {r.unit})"
            )
        return 0
    finally:
        await wallet.close()
        await tx.close()
        await engine.dispose()


def _admin(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    setup_logging(settings.log_level, settings.log_format)
    return asyncio.run(_reset_password(settings))


async def _reset_password(settings: Settings) -> int:
    from satsrouter.admin.auth import AdminAuth
    from satsrouter.store.engine import make_engine, migrate
    from satsrouter.store.tx import make_tx_runner

    url = settings.effective_database_url
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(url)
    tx = make_tx_runner(url, engine)
    try:
        await migrate(engine)
        password = await AdminAuth(tx).reset_password()
    finally:
        await tx.close()
        await engine.dispose()
    print(f"new admin password (shown once; every admin session has ended):\n{password}")
    if settings.admin_password:
        print(
            "satsrouter: ADMIN_PASSWORD is set in the environment and wins over this one; "
            "unset it to use the new password",
            file=sys.stderr,
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command line: `serve`, `migrate`, `wallet`, `admin`."""
    parser = argparse.ArgumentParser(prog="satsrouter", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the node")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--access-log", action="store_true", help="log every request line")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes sharing the port (SO_REUSEPORT) and the database (default 1)",
    )
    serve.set_defaults(func=_serve)
    sub.add_parser("migrate", help="create or upgrade the database schema").set_defaults(
        func=_migrate
    )
    wallet = sub.add_parser(
        "wallet", help="the node's ecash: audit it, or restore it from the seed"
    )
    wallet.add_argument(
        "action",
        choices=("audit", "restore"),
        help="audit: ecash held at each mint (asked) against balances and revenue, exit 1 on "
        "any difference; restore: take back unspent ecash the database lost (NUT-09)",
    )
    wallet.set_defaults(func=_wallet)
    admin = sub.add_parser("admin", help="the operator's access")
    admin.add_argument(
        "action",
        choices=("reset-password",),
        help="reset-password: make and print a new admin password, end every session",
    )
    admin.set_defaults(func=_admin)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `satsrouter` console script."""
    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args))
    except SettingsError as exc:
        print(f"satsrouter: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
