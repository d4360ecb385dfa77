"""Redemptions carry their proofs until a swap takes them, so any node can carry them.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("redemptions") as batch:
        # The token's proofs (JSON) while it waits for a swap; NULL once a swap holds them.
        batch.add_column(sa.Column("proofs", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("redemptions") as batch:
        batch.drop_column("proofs")
