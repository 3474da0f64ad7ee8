"""``address_of(url)``: the ``host:port`` a pool connects to, for error messages.

The core's messages say what could not be reached ("cannot connect to db.internal:5432") without
parsing URLs itself: each integration computes the address once, here, and hands it to its
Guard. The URL goes through :func:`~poolguard.config.urls.redact` first, so neither a password
nor a secret query value can reach the result, whatever the URL looks like.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs

from poolguard.config.urls import redact

__all__ = ["address_of"]

#: Port a URL without one connects to, by scheme (the part before any ``+driver``).
DEFAULT_PORTS = {
    "postgres": 5432,
    "postgresql": 5432,
    "mysql": 3306,
    "mariadb": 3306,
    "redis": 6379,
    "rediss": 6379,
}

_URL = re.compile(r"\s*([A-Za-z][A-Za-z0-9+.\-_]*)://(.*)", re.DOTALL)


def address_of(url: str) -> str:
    """``host:port`` of ``url`` (``h1:5432,h2:5432`` for several hosts, the socket path for
    ``unix://`` and libpq ``?host=/dir``); never user, password or database."""
    match = _URL.match(redact(url))
    if match is None:
        return "<unknown address>"
    scheme = match[1].split("+", 1)[0].lower()
    rest = match[2]
    # The userinfo (already masked) ends at the last "@", as in redact().
    hostpart = rest[rest.rfind("@") + 1 :]
    cut = re.search(r"[/?#]", hostpart)
    netloc = hostpart[: cut.start()] if cut else hostpart
    if scheme == "unix":
        return rest.split("?", 1)[0] or "<unix socket>"
    if not netloc:
        # libpq style: postgresql:///db?host=/var/run/postgresql
        query = rest.partition("?")[2]
        hosts = parse_qs(query).get("host")
        return ",".join(hosts) if hosts else "localhost"
    if "," in netloc or _has_port(netloc):
        return netloc
    port = DEFAULT_PORTS.get(scheme)
    return netloc if port is None else f"{netloc}:{port}"


def _has_port(netloc: str) -> bool:
    if netloc.startswith("["):  # [::1] or [::1]:5432
        return "]:" in netloc
    return ":" in netloc
