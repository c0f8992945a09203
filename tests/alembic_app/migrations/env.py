"""alembic's environment: online migrations against DATABASE_URL, comparing with the app's models."""

from __future__ import annotations

from alembic import context
from models import Base, engine

with engine().connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata)
    with context.begin_transaction():
        context.run_migrations()
