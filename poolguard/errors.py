"""The poolguard error tree.

Every error poolguard raises is a :class:`PoolguardError`. Through an integration, an error is
*also* an instance of what that integration's users already catch (the drop-in rule of
DESIGN.md): :func:`dropin` builds, once per pair, a class that inherits from both the poolguard
error and the foreign one (``sqlalchemy.exc.OperationalError``, ``redis.exceptions.TimeoutError``,
``psycopg.OperationalError`` ...), so ``except sqlalchemy.exc.OperationalError`` keeps working.

Messages are written for people: what happened, after how many attempts, what to tune. They
never contain a password; callers pass URLs through :func:`poolguard.config.redact` first.

Which drop-in class each integration raises: ``integrations/sqlalchemy/_errors.py``,
``integrations/psycopg_pool/_errors.py`` (both through ``integrations/_giveup.py``) and
``integrations/redis/_common.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = [
    "AmbiguousResultError",
    "AttemptRecord",
    "CircuitOpenError",
    "ConfigError",
    "ConnectTimeout",
    "PoolTimeout",
    "PoolguardError",
    "QueryTimeout",
    "TransactionTimeout",
    "dropin",
]


@dataclass(frozen=True)
class AttemptRecord:
    """One failed attempt, as kept in an error's ``history``."""

    attempt: int
    reason: str
    error: str
    delay: float


class PoolguardError(Exception):
    """Base class of every error poolguard raises."""

    def __init__(
        self,
        message: str = "",
        *,
        attempts: int = 0,
        history: Sequence[AttemptRecord] = (),
        hint: str | None = None,
    ) -> None:
        Exception.__init__(self, message)
        self.message = message
        self.attempts = attempts
        self.history: tuple[AttemptRecord, ...] = tuple(history)
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class ConfigError(PoolguardError, ValueError):
    """A setting or environment variable has a value poolguard cannot use."""

    def __init__(self, message: str, *, variable: str | None = None) -> None:
        super().__init__(message)
        self.variable = variable


class PoolTimeout(PoolguardError, TimeoutError):
    """No connection became free in the pool before the acquire timeout or deadline."""


class ConnectTimeout(PoolguardError, TimeoutError):
    """Opening a new connection (TCP, TLS, authentication) took longer than allowed."""


class QueryTimeout(PoolguardError, TimeoutError):
    """One statement or command ran past its timeout or the caller's deadline."""


class TransactionTimeout(PoolguardError, TimeoutError):
    """A whole transaction (or unit of work) ran past its timeout or the caller's deadline."""


class CircuitOpenError(PoolguardError):
    """The circuit breaker is open: the server failed repeatedly, so the call failed fast."""


class AmbiguousResultError(PoolguardError):
    """The operation may or may not have been applied (its reply was lost); it was not retried."""


E = TypeVar("E", bound=PoolguardError)

_variants: dict[tuple[type[BaseException], ...], type[BaseException]] = {}
_variants_lock = threading.Lock()


def _variant_init(self: PoolguardError, *args: Any, **kwargs: Any) -> None:
    # Foreign constructors have signatures of their own (sqlalchemy's wants statement/params/
    # orig): a foreign type whose constructor accepts just the message gets it run, so the
    # attributes its properties read exist (psycopg's ``diag``/``pgconn`` read ``_info`` and
    # ``_pgconn``). The rest are set by the integration through ``dropin(..., **attrs)``.
    # PoolguardError's constructor runs last so poolguard's args and fields win.
    message = args[0] if args else kwargs.get("message", "")
    for foreign in type(self)._dropin_key[1:]:  # type: ignore[attr-defined]
        try:
            foreign.__init__(self, message)
        except TypeError:
            pass
    PoolguardError.__init__(self, *args, **kwargs)


def _variant_reduce(self: PoolguardError) -> tuple[Any, ...]:
    # The class is made at runtime, so pickle cannot find it by name: rebuild it from its
    # bases (which pickle by reference) and restore the instance dict (fields, attrs, notes).
    key = type(self)._dropin_key  # type: ignore[attr-defined]
    return (_rebuild_variant, (key, self.message), dict(self.__dict__))


def _rebuild_variant(key: tuple[type[PoolguardError], ...], message: str) -> PoolguardError:
    return dropin_class(*key)(message)


def dropin_class(base: type[E], *foreign: type[BaseException]) -> type[E]:
    """The class that is both ``base`` and every ``foreign`` type (made once, then cached)."""
    key: tuple[type[BaseException], ...] = (base, *foreign)
    with _variants_lock:
        cls = _variants.get(key)
        if cls is None:
            name = base.__name__ + "".join(f"_{f.__name__}" for f in foreign)
            cls = type(
                name,
                (base, *foreign),
                {
                    "__init__": _variant_init,
                    "__str__": PoolguardError.__str__,
                    "__repr__": PoolguardError.__repr__,
                    "__reduce__": _variant_reduce,
                    "_dropin_key": key,
                    "__module__": base.__module__,
                    "__doc__": base.__doc__,
                    "__qualname__": name,
                },
            )
            _variants[key] = cls
    return cls  # type: ignore[return-value]


def dropin(
    base: type[E],
    foreign: type[BaseException] | Sequence[type[BaseException]],
    message: str,
    *,
    attempts: int = 0,
    history: Sequence[AttemptRecord] = (),
    hint: str | None = None,
    **attrs: Any,
) -> E:
    """An instance of ``base`` that is also an instance of the ``foreign`` type(s).

    ``attrs`` are set on the instance: use them for the attributes callers of the foreign type
    read (``orig``, ``statement``, ``params``, ``connection_invalidated`` for SQLAlchemy). Chain
    the driver's error with ``raise dropin(...) from original``.
    """
    foreign_types = (foreign,) if isinstance(foreign, type) else tuple(foreign)
    cls = dropin_class(base, *foreign_types)
    err = cls(message, attempts=attempts, history=history, hint=hint)
    for key, value in attrs.items():
        setattr(err, key, value)
    return err
