"""Database URLs as asyncpg and SQLAlchemy want them (no heavy imports here:
the services' hot paths import this, not the migration machinery)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def is_postgres_url(url: str) -> bool:
    """Whether ``url`` names a PostgreSQL server: ``postgresql://`` or
    ``postgres://``, with or without a SQLAlchemy driver (``postgresql+asyncpg://``)."""
    return urlsplit(url).scheme.split("+", 1)[0] in ("postgresql", "postgres")


def asyncpg_url(url: str) -> str:
    """``postgresql://…`` as asyncpg wants it (drops a SQLAlchemy driver suffix)."""
    parts = urlsplit(url)
    if not is_postgres_url(url):
        raise ValueError(f"DATABASE_URL must be a postgresql:// URL, got scheme {parts.scheme!r}")
    return urlunsplit(("postgresql", *parts[1:]))


def sqlalchemy_url(url: str) -> str:
    """The same URL with SQLAlchemy's asyncpg driver named."""
    return urlunsplit(("postgresql+asyncpg", *urlsplit(asyncpg_url(url))[1:]))
