"""Upstream providers the admin configures (or overrides), their API keys encrypted.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "providers",
        sa.Column("name", sa.String(64), primary_key=True),
        # `provider`: a whole provider of the admin's; `override`: fields laid over the
        # environment's or the providers file's provider of that name.
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("config", sa.Text, nullable=False),  # JSON, never the key
        sa.Column("api_key_encrypted", sa.Text, nullable=True),  # Fernet, PROVIDER_SECRET
        sa.Column("updated_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("providers")
