"""the Stripe event queue

Webhooks may be taken in without being acted on (STRIPE_WEBHOOK_PROCESSING=queued): the worker
(`flask billing stripe work`) claims events not yet done in Stripe's order, and tries a failed
one again later. `next_attempt_at` says when; the partial index holds only the events waiting
(received or failed), so a claim reads a few index entries, not the whole history.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 10:40:00

"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("stripe_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(
            "ix_stripe_events_pending",
            ["stripe_created", "id"],
            unique=False,
            postgresql_where=sa.text("status IN ('received', 'failed')"),
            sqlite_where=sa.text("status IN ('received', 'failed')"),
        )


def downgrade():
    with op.batch_alter_table("stripe_events", schema=None) as batch_op:
        batch_op.drop_index("ix_stripe_events_pending")
        batch_op.drop_column("next_attempt_at")
