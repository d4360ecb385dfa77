"""The operator's side: admin sessions and password, settings changed at run time, request
records for usage figures, disabled keys.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Values the node keeps about itself (the admin password's hash).
    op.create_table(
        "node_config",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "admin_sessions",
        sa.Column("id_hash", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    op.create_table(
        "setting_overrides",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),  # JSON
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("disabled_at", sa.Float, nullable=True))
        batch.add_column(sa.Column("last_used_at", sa.Float, nullable=True))
    with op.batch_alter_table("reservations") as batch:
        batch.add_column(sa.Column("provider", sa.String(64), nullable=True))
        batch.add_column(sa.Column("endpoint", sa.String(40), nullable=True))
        batch.add_column(sa.Column("input_tokens", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("output_tokens", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("error", sa.String(40), nullable=True))
    op.create_index("ix_reservations_settled", "reservations", ["settled_at"])


def downgrade() -> None:
    op.drop_index("ix_reservations_settled", "reservations")
    with op.batch_alter_table("reservations") as batch:
        for name in ("error", "output_tokens", "input_tokens", "endpoint", "provider"):
            batch.drop_column(name)
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("last_used_at")
        batch.drop_column("disabled_at")
    op.drop_table("setting_overrides")
    op.drop_table("admin_sessions")
    op.drop_table("node_config")
