"""Alembic migrations of the records database; run them with ``core.db.migrate.upgrade`` or
``equipwatch db upgrade``. Revisions are written by hand; ``versions/`` holds one file each."""
