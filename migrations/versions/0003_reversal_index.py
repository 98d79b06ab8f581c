"""index the reversals

A void (and an admin's reversal after close) first asks whether the redemption was reversed
already: `reverses_entry_id = :id`. Without an index that is a scan of the whole ledger, which
grows with every redemption (bench/redeem_load.py: 0.6 ms a void at 9,000 entries, and linear
from there). Only reversals carry the column, so the index is partial and stays small.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 09:45:00

"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_ledger_entries_reverses_entry_id",
            ["reverses_entry_id"],
            unique=False,
            postgresql_where=sa.text("reverses_entry_id IS NOT NULL"),
            sqlite_where=sa.text("reverses_entry_id IS NOT NULL"),
        )


def downgrade():
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.drop_index("ix_ledger_entries_reverses_entry_id")
