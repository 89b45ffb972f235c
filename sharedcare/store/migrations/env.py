"""Alembic environment: the engine is handed in by sharedcare.store.migrate."""

from alembic import context

import sharedcare.governance.schema  # noqa: F401  (registers the governance tables)
import sharedcare.programme.schema  # noqa: F401  (and the programme tables)
from sharedcare.store.schema import metadata

engine = context.config.attributes["engine"]
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
