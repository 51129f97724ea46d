"""Alembic environment: runs on the connection routined hands it, or on a URL."""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import create_engine

from routined.models import Base, UTCDateTime

config = context.config
target_metadata = Base.metadata


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    # Migrations must not import routined's own types: a later change to them
    # would rewrite history. UTCDateTime is a plain DATETIME in the schema.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime()"
    return False


OPTIONS: dict[str, Any] = {
    "target_metadata": target_metadata,
    "render_as_batch": True,
    "render_item": render_item,
}


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, **OPTIONS)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise RuntimeError("name the database: alembic -x url=… (or pass a connection)")
    engine = create_engine(url)
    with engine.begin() as connection:
        context.configure(connection=connection, **OPTIONS)
        with context.begin_transaction():
            context.run_migrations()


run_migrations()
