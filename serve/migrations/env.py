"""Alembic environment: runs on the connection :func:`serve.db.migrate` hands over."""

from alembic import context
from sqlalchemy import create_engine

from serve.db import Base, normalise_url

connection = context.config.attributes.get("connection")


def _run(conn) -> None:
    context.configure(
        connection=conn,
        target_metadata=Base.metadata,
        render_as_batch=conn.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if connection is not None:
    _run(connection)
else:  # the alembic command line: sqlalchemy.url from alembic.ini or -x db=URL
    url = context.get_x_argument(as_dictionary=True).get("db") or context.config.get_main_option("sqlalchemy.url")
    with create_engine(normalise_url(url)).begin() as conn:
        _run(conn)
