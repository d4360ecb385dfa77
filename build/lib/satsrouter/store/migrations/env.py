"""Alembic environment: runs on the connection the node hands over (see store.engine.migrate)."""

from __future__ import annotations

from alembic import context

from satsrouter.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through satsrouter.store.engine.migrate")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
