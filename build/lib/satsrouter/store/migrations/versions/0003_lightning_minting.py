"""Lightning funding: the outputs reserved for minting each invoice's quote, and its credit.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("lightning_invoices") as batch:
        batch.add_column(sa.Column("mint_keyset", sa.String(66), nullable=True))
        batch.add_column(sa.Column("mint_counter", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("mint_amounts", sa.Text, nullable=True))
        batch.add_column(sa.Column("credited_msat", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("lightning_invoices") as batch:
        for name in ("credited_msat", "mint_amounts", "mint_counter", "mint_keyset"):
            batch.drop_column(name)
