"""What differs between the SQLAlchemy releases poolguard supports (2.0.30 and newer)."""

from __future__ import annotations

__all__ = ["await_only"]

try:  # SQLAlchemy >= 2.1 names it await_; await_only is deprecated from 2.2
    from sqlalchemy.util.concurrency import await_ as await_only
except ImportError:  # pragma: no cover - SQLAlchemy 2.0
    from sqlalchemy.util import await_only
