"""member search indexes

The front-desk search (members.service.search_members) matches a prefix of the full name, the
last name, the email or the phone digits, or the end of the phone digits, and lists members by
last name, full name and id: the list's order becomes one index (replacing the last-name index),
so a page of the list is read from it without sorting a last name's members. A prefix is searched
as a byte-order range ("tan": from 'tan' up to 'tao'), which on PostgreSQL needs the pattern
operator class whatever the database's collation: the prefix indexes are such btrees, carrying the
columns the results are sorted by (index-only scans), and the end of a phone number has a trigram
GIN index (pg_trgm). On SQLite the postgresql_* options do not apply: the same names are plain
indexes on the same columns, as the models declare them.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 09:00:00

"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _create_search_indexes() -> None:
    with op.batch_alter_table("members", schema=None) as batch_op:
        batch_op.create_index(
            "ix_members_list_order", ["last_name_lower", "search_name", "id"], unique=False
        )
        batch_op.create_index(
            "ix_members_search_name",
            ["search_name"],
            unique=False,
            postgresql_ops={"search_name": "varchar_pattern_ops"},
            postgresql_include=["last_name_lower", "id"],
        )
        batch_op.create_index(
            "ix_members_last_name_prefix",
            ["last_name_lower"],
            unique=False,
            postgresql_ops={"last_name_lower": "varchar_pattern_ops"},
            postgresql_include=["search_name", "id"],
        )
        batch_op.create_index(
            "ix_members_email_prefix",
            ["email_normalized"],
            unique=False,
            postgresql_ops={"email_normalized": "varchar_pattern_ops"},
            postgresql_include=["last_name_lower", "search_name", "id"],
        )
        batch_op.create_index(
            "ix_members_phone_digits",
            ["phone_digits"],
            unique=False,
            postgresql_ops={"phone_digits": "varchar_pattern_ops"},
            postgresql_include=["last_name_lower", "search_name", "id"],
        )
        batch_op.create_index(
            "ix_members_phone_digits_trgm",
            ["phone_digits"],
            unique=False,
            postgresql_using="gin",
            postgresql_ops={"phone_digits": "gin_trgm_ops"},
        )


def upgrade():
    if op.get_bind().dialect.name == "postgresql":
        # Trusted since PostgreSQL 13: the database's owner may create it.
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    with op.batch_alter_table("members", schema=None) as batch_op:
        batch_op.drop_index("ix_members_last_name_lower")
        batch_op.drop_index("ix_members_search_name")
        batch_op.drop_index("ix_members_phone_digits")
    _create_search_indexes()


def downgrade():
    with op.batch_alter_table("members", schema=None) as batch_op:
        batch_op.drop_index("ix_members_phone_digits_trgm")
        batch_op.drop_index("ix_members_phone_digits")
        batch_op.drop_index("ix_members_email_prefix")
        batch_op.drop_index("ix_members_last_name_prefix")
        batch_op.drop_index("ix_members_search_name")
        batch_op.drop_index("ix_members_list_order")
        batch_op.create_index("ix_members_last_name_lower", ["last_name_lower"], unique=False)
        batch_op.create_index("ix_members_phone_digits", ["phone_digits"], unique=False)
        batch_op.create_index("ix_members_search_name", ["search_name"], unique=False)
    # pg_trgm stays: other objects may have come to use it, and it is harmless when unused.
