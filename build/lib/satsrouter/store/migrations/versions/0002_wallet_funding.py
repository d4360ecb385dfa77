"""Wallet and funding: child keys, refund addresses, expiry, Lightning invoices and payouts.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("parent_id", sa.Integer, nullable=True))
        batch.add_column(sa.Column("spend_limit_msat", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("limit_period", sa.String(8), nullable=True))
        batch.add_column(sa.Column("period_start", sa.Float, nullable=True))
        batch.add_column(
            sa.Column("period_spent_msat", sa.BigInteger, nullable=False, server_default="0")
        )
        batch.add_column(
            sa.Column("period_reserved_msat", sa.BigInteger, nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("refund_lnurl", sa.Text, nullable=True))
        batch.add_column(sa.Column("expires_at", sa.Float, nullable=True))
        batch.create_index("ix_accounts_parent", ["parent_id"])
        batch.create_index("ix_accounts_expires", ["expires_at"])
    with op.batch_alter_table("payouts") as batch:
        batch.add_column(sa.Column("method", sa.String(12), nullable=False, server_default="cashu"))
        batch.add_column(sa.Column("destination", sa.Text, nullable=True))
        batch.add_column(sa.Column("detail", sa.Text, nullable=True))
        batch.add_column(sa.Column("fee_msat", sa.BigInteger, nullable=False, server_default="0"))
        batch.create_index("ix_payouts_account", ["account_id"])
        batch.create_index("ix_payouts_state", ["state"])
    with op.batch_alter_table("reservations") as batch:
        # A child key's request: its money is the parent's, its limit is the child's.
        batch.add_column(sa.Column("child_id", sa.Integer, nullable=True))
    op.create_table(
        "lightning_invoices",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("quote_id", sa.Text, nullable=False),
        sa.Column("mint_url", sa.Text, nullable=False),
        sa.Column("unit", sa.String(8), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("bolt11", sa.Text, nullable=False),
        sa.Column("purpose", sa.String(8), nullable=False),
        sa.Column("account_id", sa.Integer, nullable=True),
        sa.Column("key_hash", sa.String(64), nullable=True),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("expires_at", sa.Float, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("ix_lightning_invoices_state", "lightning_invoices", ["state"])


def downgrade() -> None:
    op.drop_table("lightning_invoices")
    with op.batch_alter_table("reservations") as batch:
        batch.drop_column("child_id")
    with op.batch_alter_table("payouts") as batch:
        batch.drop_index("ix_payouts_state")
        batch.drop_index("ix_payouts_account")
        for name in ("fee_msat", "detail", "destination", "method"):
            batch.drop_column(name)
    with op.batch_alter_table("accounts") as batch:
        batch.drop_index("ix_accounts_expires")
        batch.drop_index("ix_accounts_parent")
        for name in (
            "expires_at",
            "refund_lnurl",
            "period_reserved_msat",
            "period_spent_msat",
            "period_start",
            "limit_period",
            "spend_limit_msat",
            "parent_id",
        ):
            batch.drop_column(name)
