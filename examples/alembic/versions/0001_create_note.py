"""create note

Revision ID: 0001
Revises:
Create Date: 2026-11-30 23:00:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "example_note",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("title", sa.String(200), nullable=False),
    )
    op.bulk_insert(
        sa.table("example_note", sa.column("id", sa.Integer), sa.column("title", sa.String)),
        [{"id": 1, "title": "first"}, {"id": 2, "title": "second"}],
    )


def downgrade() -> None:
    op.drop_table("example_note")
