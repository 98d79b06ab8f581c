"""Stripe event storage: lz4 payloads, and only the indexes a query reads

Every webhook delivery inserts a row, and the worker updates it once: each index on the table
is written both times. No query reads events by type alone (the subscription catch-up reads by
object_id, whose index stays), and the status index held every processed event although only
the failed and flagged ones are ever looked up by status (the worker reads the pending index).
So the type index goes and the status index becomes partial. On PostgreSQL the payload (2 to
4 KB of JSON, compressed as it is stored) takes lz4 where the server has it
(billing/stripe_sync/models.py says why and what it measured).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 13:20:00

"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

COMPRESS_PAYLOADS_WITH_LZ4 = (  # as billing.stripe_sync.models says it, at this revision
    "DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression'"
    " AND 'lz4' = ANY (enumvals)) THEN"
    " ALTER TABLE stripe_events ALTER COLUMN payload SET COMPRESSION lz4; END IF; END $$"
)


def upgrade():
    with op.batch_alter_table("stripe_events", schema=None) as batch_op:
        batch_op.drop_index("ix_stripe_events_type")
        batch_op.drop_index("ix_stripe_events_status")
        batch_op.create_index(
            "ix_stripe_events_attention",
            ["status"],
            unique=False,
            postgresql_where=sa.text("status IN ('failed', 'flagged')"),
            sqlite_where=sa.text("status IN ('failed', 'flagged')"),
        )
    if op.get_context().dialect.name == "postgresql":
        op.execute(COMPRESS_PAYLOADS_WITH_LZ4)


def downgrade():
    if op.get_context().dialect.name == "postgresql":
        op.execute(
            "DO $$ BEGIN IF current_setting('server_version_num')::int >= 140000 THEN"
            " ALTER TABLE stripe_events ALTER COLUMN payload SET COMPRESSION DEFAULT; END IF;"
            " END $$"
        )
    with op.batch_alter_table("stripe_events", schema=None) as batch_op:
        batch_op.drop_index("ix_stripe_events_attention")
        batch_op.create_index("ix_stripe_events_status", ["status"], unique=False)
        batch_op.create_index("ix_stripe_events_type", ["type"], unique=False)
