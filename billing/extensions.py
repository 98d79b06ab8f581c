"""Extensions are created here and bound to an app in create_app, so nothing is configured at import."""

from __future__ import annotations

import marshmallow as ma
from flask_migrate import Migrate
from flask_smorest import Blueprint
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase
from webargs.flaskparser import FlaskParser

from billing.errors import Api

# Named constraints, so that Alembic can drop them again on every database (SQLite batch mode too).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
api = Api()


class _OneSchemaPerClass(FlaskParser):
    """`@blp.arguments(SomeSchema)` hands webargs the class, and webargs made a new instance of
    it for every request: building a schema's fields cost more than loading a desk's request
    body with them (about a tenth of a redemption's Python). A schema keeps nothing between
    loads, so one instance per class serves every request and thread."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._schemas: dict[type, ma.Schema] = {}

    def _get_schema(self, argmap, req) -> ma.Schema:
        if isinstance(argmap, type) and issubclass(argmap, ma.Schema):
            schema = self._schemas.get(argmap)
            return schema if schema is not None else self._schemas.setdefault(argmap, argmap())
        return super()._get_schema(argmap, req)


# Read by every blueprint's `arguments` when its views are declared (after this import).
Blueprint.ARGUMENTS_PARSER = _OneSchemaPerClass()
