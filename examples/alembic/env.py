"""Alembic's env.py, with the engine made by poolguard (the one line that changes).

    DATABASE_URL=postgres://app:secret@localhost/app \
    POOLGUARD_MIGRATIONS_QUERY_TIMEOUT=off POOLGUARD_MIGRATIONS_LOCK_TIMEOUT=5s \
    alembic -c examples/alembic/alembic.ini upgrade head

Alembic's template builds its engine with ``engine_from_config(..., poolclass=NullPool)``; here
``poolguard.create_engine(url, name="migrations", poolclass=NullPool)`` does, so that:

- a migration run during a deploy, while the database restarts or fails over, waits for it
  (connect retries with backoff, within POOLGUARD_MIGRATIONS_RETRY_TIMEOUT) instead of failing
  the deploy at the first refused connection; a DDL statement is never re-sent by poolguard
  (it is not idempotent; PostgreSQL rolls the migration's transaction back when the
  connection is lost, and Alembic's next run starts it again);
- ``name="migrations"`` reads ``POOLGUARD_MIGRATIONS_<SETTING>`` before ``POOLGUARD_<SETTING>``:
  the app's short query timeout does not apply to an ALTER TABLE if you say so
  (``POOLGUARD_MIGRATIONS_QUERY_TIMEOUT=off``), and ``POOLGUARD_MIGRATIONS_LOCK_TIMEOUT=5s``
  stops a migration from queueing every request behind its lock for long;
- NullPool, as Alembic's template uses: one connection, closed when the migration is done.
  poolguard honours any pool class; a pool-sizing keyword given with NullPool
  (``pool_size=``, ``pool_timeout=``) is refused with a ConfigError rather than ignored.

The URL: ``sqlalchemy.url`` if the caller set it (``config.set_main_option``, the command API),
else ``MIGRATIONS_DATABASE_URL``, else ``DATABASE_URL`` (``postgres://`` and ``mysql://`` work).
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy.pool import NullPool

import poolguard

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

# Your models' MetaData, for autogenerate (``from myapp.models import Base``).
target_metadata = None


def database_url() -> str | None:
    return (
        config.get_main_option("sqlalchemy.url")
        or os.environ.get("MIGRATIONS_DATABASE_URL")
        or os.environ.get("DATABASE_URL")
    )


def run_migrations_offline() -> None:
    """``alembic upgrade head --sql``: the SQL is printed, nothing connects."""
    # The engine only supplies the normalized URL (dialect and driver); it never connects.
    url = poolguard.create_engine(database_url(), name="migrations", poolclass=NullPool).url
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = poolguard.create_engine(database_url(), name="migrations", poolclass=NullPool)
    try:
        with engine.connect() as connection:
            context.configure(connection=connection, target_metadata=target_metadata)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
