"""Storage: one database (SQLite file or PostgreSQL) behind one async interface, and the stores on it."""

from bot.store.database import (
    Database,
    DatabaseClosed,
    DatabaseError,
    IntegrityError,
    PostgresDatabase,
    SqliteDatabase,
    is_postgres_url,
    open_database,
    redact_url,
)

__all__ = [
    "Database",
    "DatabaseClosed",
    "DatabaseError",
    "IntegrityError",
    "PostgresDatabase",
    "SqliteDatabase",
    "is_postgres_url",
    "open_database",
    "redact_url",
]
