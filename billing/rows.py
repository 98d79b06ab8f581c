"""New rows on the hot paths, written without the ORM's unit of work.

A flush works out what changed, in which order, for every object in the session; for one new row
on a path run hundreds of times a second (a line rung up at the desk, a paid period's grant) that
costs more than the INSERT itself. `insert_persistent` writes the row with one cached statement
and hands the object to the session as the row it now is, as if it had been flushed.

Each statement is a round trip, and on the desk's path a round trip costs more (in Python and in
PostgreSQL) than what it carries, so two writes that always go together go in one statement where
the database can take it: a row with the rows that point at it (`insert_with_children`), a row
unless its twin is already there (`insert_persistent_unless`)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import make_transient_to_detached

from billing.extensions import db

T = TypeVar("T")


def _row_values(obj) -> dict:
    """The new object's row: every column set on the object, and every column without a
    default (None is NULL either way); a column with a default left unset is the database's to
    fill, and is read back only if someone asks for it."""
    table: sa.Table = obj.__table__
    values = {
        column.key: getattr(obj, column.key)
        for column in table.c
        if column.key != "id"
        and (
            column.key in obj.__dict__ or (column.default is None and column.server_default is None)
        )
    }
    for key, value in values.items():  # known now: none is read back from the row
        setattr(obj, key, value)
    return values


def _persistent(obj: T, row_id: int) -> T:
    obj.id = row_id  # type: ignore[attr-defined]
    make_transient_to_detached(obj)
    db.session.add(obj)
    return obj


def insert_persistent(obj: T) -> T:
    """INSERT the new object's row (RETURNING its id) and add it to the session as persistent."""
    values = _row_values(obj)
    row_id = db.session.connection().execute(returning_ids(obj.__table__), values).scalar_one()  # type: ignore[attr-defined]
    return _persistent(obj, row_id)


def insert_persistent_unless(obj: T, twin: sa.Exists, params: dict) -> T | None:
    """INSERT the new object's row unless `twin` (an EXISTS with bound parameters `params`)
    finds one already there: the object, persistent, or None when the twin was found. One
    statement: the check and the insert see the same snapshot, so the caller holds whatever lock
    makes the twin's absence still true when the row lands."""
    values = _row_values(obj)
    table: sa.Table = obj.__table__  # type: ignore[attr-defined]
    statement = _insert_unless(table, tuple(values), twin)
    row_id = db.session.connection().execute(statement, {**params, **_prefixed(values)}).scalar()
    return None if row_id is None else _persistent(obj, row_id)


@functools.lru_cache(maxsize=32)
def _insert_unless(table: sa.Table, keys: tuple[str, ...], twin: sa.Exists) -> sa.Insert:
    """INSERT INTO table (keys) SELECT :new_key... WHERE NOT twin RETURNING id."""
    new = sa.select(*_typed_params(table, keys, "new_")).where(~twin)
    return table.insert().from_select(list(keys), new).returning(table.c.id)


def insert_with_children(
    parent: T, children: Sequence[dict], child_table: sa.Table, foreign_key: str
) -> T:
    """INSERT a new row and the rows that point at it (their `foreign_key` set to its id) and
    add the parent to the session as persistent. On PostgreSQL one statement (the parent in a
    data-modifying WITH, the children selected from it); elsewhere one for each."""
    if not children or db.session.get_bind().dialect.name != "postgresql":
        insert_persistent(parent)
        if children:
            rows = [{**child, foreign_key: parent.id} for child in children]  # type: ignore[attr-defined]
            db.session.connection().execute(child_table.insert(), rows)
        return parent
    values = _row_values(parent)
    table: sa.Table = parent.__table__  # type: ignore[attr-defined]
    child_keys = tuple(k for k in children[0] if k != foreign_key)
    statement = _parent_and_children(
        table, tuple(values), child_table, child_keys, foreign_key, len(children)
    )
    params = _prefixed(values)
    for i, child in enumerate(children):
        params.update(_prefixed({k: child[k] for k in child_keys}, f"c{i}_"))
    row_id = db.session.connection().execute(statement, params).scalars().first()
    return _persistent(parent, row_id)


@functools.lru_cache(maxsize=32)
def _parent_and_children(
    table: sa.Table,
    keys: tuple[str, ...],
    child_table: sa.Table,
    child_keys: tuple[str, ...],
    foreign_key: str,
    n: int,
) -> sa.Insert:
    """WITH parent AS (INSERT INTO table ... RETURNING id)
    INSERT INTO child_table (child_keys, foreign_key) SELECT :c0_..., parent.id FROM parent
    UNION ALL ... RETURNING foreign_key."""
    parent = (
        table.insert()
        .values({k: sa.bindparam(f"new_{k}", type_=table.c[k].type) for k in keys})
        .returning(table.c.id)
        .cte("parent")
    )
    rows = [
        sa.select(*_typed_params(child_table, child_keys, f"c{i}_"), parent.c.id) for i in range(n)
    ]
    chosen = rows[0] if n == 1 else sa.union_all(*rows)
    return (
        child_table.insert()
        .from_select([*child_keys, foreign_key], chosen)
        .returning(child_table.c[foreign_key])
        .add_cte(parent)
    )


def _typed_params(table: sa.Table, keys: Sequence[str], prefix: str) -> list:
    return [sa.bindparam(f"{prefix}{k}", type_=table.c[k].type).label(k) for k in keys]


def _prefixed(values: dict, prefix: str = "new_") -> dict:
    return {f"{prefix}{k}": v for k, v in values.items()}


@functools.cache
def returning_ids(table: sa.Table) -> sa.Insert:
    """INSERT into `table` RETURNING id, built once; run with many rows, the ids come back in
    the order of the rows."""
    return table.insert().returning(table.c.id, sort_by_parameter_order=True)
