"""note author

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 23:01:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "example_note",
        sa.Column("author", sa.String(100), nullable=False, server_default="unknown"),
    )
    op.create_index("ix_example_note_author", "example_note", ["author"])


def downgrade() -> None:
    op.drop_index("ix_example_note_author", table_name="example_note")
    op.drop_column("example_note", "author")
