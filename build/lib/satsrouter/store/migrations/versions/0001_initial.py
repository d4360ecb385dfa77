"""Initial schema: accounts, journal, reservations, redemptions, payouts, instances.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("mint_url", sa.Text, nullable=False),
        sa.Column("unit", sa.String(8), nullable=False),
        sa.Column("balance_msat", sa.BigInteger, nullable=False),
        sa.Column("reserved_msat", sa.BigInteger, nullable=False),
        sa.Column("total_spent_msat", sa.BigInteger, nullable=False),
        sa.Column("total_requests", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.CheckConstraint("balance_msat >= 0", name="ck_balance_nonneg"),
        sa.CheckConstraint("reserved_msat >= 0", name="ck_reserved_nonneg"),
        sa.CheckConstraint("balance_msat - reserved_msat >= 0", name="ck_available_nonneg"),
    )
    op.create_table(
        "journal",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("amount_msat", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("ref", sa.String(80), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_journal_account", "journal", ["account_id"])
    op.create_table(
        "reservations",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("amount_msat", sa.BigInteger, nullable=False),
        sa.Column("charged_msat", sa.BigInteger, nullable=True),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("instance_id", sa.String(40), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("settled_at", sa.Float, nullable=True),
    )
    op.create_index("ix_reservations_state", "reservations", ["state"])
    op.create_table(
        "redemptions",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("mint_url", sa.Text, nullable=False),
        sa.Column("unit", sa.String(8), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("token", sa.Text, nullable=True),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("account_id", sa.Integer, nullable=True),
        sa.Column("credited_msat", sa.BigInteger, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("ix_redemptions_state", "redemptions", ["state"])
    op.create_table(
        "payouts",
        sa.Column("id", sa.String(100), primary_key=True),
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("amount_msat", sa.BigInteger, nullable=False),
        sa.Column("unit", sa.String(8), nullable=False),
        sa.Column("mint_url", sa.Text, nullable=False),
        sa.Column("token", sa.Text, nullable=True),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "instances",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("heartbeat_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for name in ("instances", "payouts", "redemptions", "reservations", "journal", "accounts"):
        op.drop_table(name)
