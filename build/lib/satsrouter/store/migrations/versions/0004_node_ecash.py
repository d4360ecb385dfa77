"""The node's ecash in the node's database: seed, counters, proofs and mint operations (I6).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "wallet_seed",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("mnemonic", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "wallet_keysets",
        sa.Column("id", sa.String(66), primary_key=True),
        sa.Column("mint_url", sa.Text, nullable=False),
        sa.Column("unit", sa.String(8), nullable=False),
        sa.Column("counter", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_table(
        "wallet_proofs",
        sa.Column("secret", sa.Text, primary_key=True),
        sa.Column("keyset_id", sa.String(66), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("signature", sa.Text, nullable=False),
        sa.Column("dleq", sa.Text, nullable=True),
        sa.Column("mint_url", sa.Text, nullable=False),
        sa.Column("unit", sa.String(8), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("op_id", sa.String(100), nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("ix_wallet_proofs_holding", "wallet_proofs", ["mint_url", "unit", "state"])
    op.create_index("ix_wallet_proofs_op", "wallet_proofs", ["op_id"])
    op.create_table(
        "wallet_ops",
        sa.Column("id", sa.String(80), primary_key=True),
        sa.Column("kind", sa.String(12), nullable=False),
        sa.Column("mint_url", sa.Text, nullable=False),
        sa.Column("unit", sa.String(8), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("instance_id", sa.String(40), nullable=False),
        sa.Column("keyset_id", sa.String(66), nullable=True),
        sa.Column("outputs", sa.Text, nullable=True),
        sa.Column("inputs", sa.Text, nullable=True),
        sa.Column("detail", sa.Text, nullable=True),
        sa.Column("node_delta_msat", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("ix_wallet_ops_state", "wallet_ops", ["state"])
    with op.batch_alter_table("redemptions") as batch:
        batch.add_column(sa.Column("instance_id", sa.String(40), nullable=True))
        batch.add_column(sa.Column("op_id", sa.String(80), nullable=True))
    with op.batch_alter_table("payouts") as batch:
        batch.add_column(sa.Column("instance_id", sa.String(40), nullable=True))
    with op.batch_alter_table("lightning_invoices") as batch:
        batch.add_column(sa.Column("quote_key", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("lightning_invoices") as batch:
        batch.drop_column("quote_key")
    with op.batch_alter_table("payouts") as batch:
        batch.drop_column("instance_id")
    with op.batch_alter_table("redemptions") as batch:
        batch.drop_column("op_id")
        batch.drop_column("instance_id")
    for name in ("wallet_ops", "wallet_proofs", "wallet_keysets", "wallet_seed"):
        op.drop_table(name)
