"""The `satsrouter` command: serve, demo, migrate."""

from __future__ import annotations

import argparse
import asyncio
import sys

from satsrouter.logs import setup_logging
from satsrouter.settings import Settings, SettingsError


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from satsrouter.app import create_app

    settings = Settings.from_env()
    setup_logging(settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_config=None,  # our handlers, with the secret filter
        access_log=args.access_log,
        loop="uvloop",
        http="httptools",
        timeout_graceful_shutdown=10,
    )
    return 0


def _migrate(_: argparse.Namespace) -> int:
    from satsrouter.store.engine import make_engine, migrate

    settings = Settings.from_env()
    setup_logging(settings.log_level)

    async def run() -> None:
        engine = make_engine(settings.effective_database_url)
        try:
            await migrate(engine)
        finally:
            await engine.dispose()

    asyncio.run(run())
    print("database is up to date")
    return 0


def _demo(_: argparse.Namespace) -> int:
    from satsrouter.demo import run_demo

    return run_demo()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `satsrouter` console script."""
    parser = argparse.ArgumentParser(prog="satsrouter", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the node")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--access-log", action="store_true", help="log every request line")
    serve.set_defaults(func=_serve)
    sub.add_parser("migrate", help="create or upgrade the database schema").set_defaults(
        func=_migrate
    )
    sub.add_parser(
        "demo", help="local mint + fake upstream + node + one paid request"
    ).set_defaults(func=_demo)
    args = parser.parse_args(argv)
    try:
        code = int(args.func(args))
    except SettingsError as exc:
        print(f"satsrouter: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
