"""Leases: which node process runs each fleet-wide background job (store/leases.py).

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(40), nullable=False),  # an instance id
        sa.Column("expires_at", sa.Float, nullable=False),  # the holder's time.time()
        sa.Column("acquired_at", sa.Float, nullable=False),  # when this holder took it
    )


def downgrade() -> None:
    op.drop_table("leases")
