"""PgBouncer's own errors: what each one means for retry safety (used by ``postgres.py``).

PgBouncer sends every error of its own with SQLSTATE ``08P01`` (protocol_violation) and then
closes the client connection (PgBouncer 1.18, ``proto.c``: ``send_pooler_error``), so the
SQLSTATE alone says nothing: only the text tells "no server was reachable, your query never
left PgBouncer" (retry anything) from "the server died under your query" (retry reads only).
Read from PgBouncer's source (``janitor.c``, ``objects.c``, ``client.c``, ``server.c``):

- ``server login has been failing, try again later (server_login_retry)`` (``check_fast_fail``;
  older releases: ``pgbouncer cannot connect to server``): every server login failed recently
  and no server connection is left; the client is dropped before its query is sent anywhere;
- ``query_wait_timeout`` / ``query_timeout`` *with an underscore*: raised only for clients in the
  *waiting* list, i.e. still queued for a server (``pool_client_maint``): nothing was sent;
- ``client_login_timeout``: the login waited for a server that never came;
- ``no more connections allowed (max_client_conn)``, ``bouncer resources exhaustion``:
  refused at login;
- ``client_idle_timeout``: dropped while idle *without* a server linked (outside a
  transaction): the next request finds it closed, before send; idle siblings are likely gone
  too (POOL scope: validated at their next checkout);
- ``server conn crashed?``: the server connection died while linked to this client: the
  request may have run (after send);
- ``query timeout`` *with a space*: the server ran the query longer than ``query_timeout``
  and PgBouncer cut it: final, as a server-side statement timeout is;
- ``idle transaction timeout``: the client sat idle in a transaction; its work is gone;
- ``database removed``: the admin console's ``KILL`` closed every client of the database (a
  query in flight may have run; the idle siblings are gone too: POOL scope);
- ``pause failed`` / ``suspend_timeout``: left to the generic 08P01 rule (after send).

The "nothing was sent" cases are connect-phase: they feed the circuit breaker and are not
charged to the retry budget (a PostgreSQL restart behind PgBouncer makes every caller meet one
of them at once; charging them drained the budget and surfaced errors to reads, measured).
"""

from __future__ import annotations

from poolguard.core.disposition import Classification, Disposition, Scope

__all__ = ["PGBOUNCER_MESSAGES", "PGBOUNCER_SQLSTATE", "classify_pgbouncer"]

PGBOUNCER_SQLSTATE = "08P01"


def _not_sent(reason: str, scope: Scope = Scope.NONE) -> Classification:
    return Classification(
        Disposition.RETRY, reason, disconnect=True, scope=scope, connect_phase=True
    )


#: (lower-case substring of the message, verdict), first match wins: ``query_wait_timeout``
#: and ``query_timeout`` are matched before ``query timeout``.
PGBOUNCER_MESSAGES: tuple[tuple[str, Classification], ...] = (
    ("server login has been failing", _not_sent("pgbouncer_server_login_failing")),
    ("pgbouncer cannot connect to server", _not_sent("pgbouncer_server_login_failing")),
    ("query_wait_timeout", _not_sent("pgbouncer_query_wait_timeout")),
    ("query_timeout", _not_sent("pgbouncer_query_wait_timeout")),
    ("client_login_timeout", _not_sent("pgbouncer_login_timeout")),
    ("no more connections allowed", _not_sent("too_many_connections")),
    ("bouncer resources exhaustion", _not_sent("too_many_connections")),
    (
        "client_idle_timeout",
        Classification(
            Disposition.RETRY, "pgbouncer_client_idle_timeout", disconnect=True, scope=Scope.POOL
        ),
    ),
    (
        "server conn crashed",
        Classification(
            Disposition.RETRY_IF_IDEMPOTENT,
            "pgbouncer_server_conn_crashed",
            disconnect=True,
            scope=Scope.CONNECTION,
        ),
    ),
    (
        "query timeout",
        Classification(Disposition.FAIL, "pgbouncer_query_timeout", disconnect=True),
    ),
    (
        # Admin console KILL <db> (also a database dropped from the config on RELOAD): every
        # client and server connection of the database is closed, idle or not.
        "database removed",
        Classification(
            Disposition.RETRY_IF_IDEMPOTENT,
            "pgbouncer_database_killed",
            disconnect=True,
            scope=Scope.POOL,
        ),
    ),
    # At login (no SQLSTATE reaches psycopg then): permanent.
    ("no such database", Classification(Disposition.FAIL, "unknown_role_or_database")),
    ("no such user", Classification(Disposition.FAIL, "unknown_role_or_database")),
    (
        "idle transaction timeout",
        Classification(
            Disposition.RETRY_IF_IDEMPOTENT,
            "idle_in_transaction_timeout",
            disconnect=True,
            scope=Scope.CONNECTION,
        ),
    ),
)


def classify_pgbouncer(message: str) -> Classification | None:
    """The verdict for one of PgBouncer's own error texts, or None for any other text."""
    text = message.lower()
    for needle, verdict in PGBOUNCER_MESSAGES:
        if needle in text:
            return verdict
    return None
