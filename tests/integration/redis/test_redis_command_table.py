"""The explicit idempotency table checked against the server's own command metadata."""

from __future__ import annotations

from typing import Any

import pytest

import poolguard.redis
from poolguard.backends import redis as backend
from poolguard.testing.servers.redis import resp_command

pytestmark = pytest.mark.redis

#: Flagged readonly by the server but deliberately not in the table (none today).
READONLY_EXCEPTIONS: frozenset[str] = frozenset()


def server_commands(server: Any) -> dict[str, set[str]]:
    """``{"GET": {"readonly", "fast"}, "CONFIG GET": {...}}`` from COMMAND (subcommands too)."""
    # The raw reply (redis-py's COMMAND callback flattens away the subcommands).
    reply = resp_command(server.host, server.port, [("COMMAND",)])[0]
    assert isinstance(reply, list)
    found: dict[str, set[str]] = {}
    for entry in reply:
        assert isinstance(entry, list)
        subcommands = entry[9] if len(entry) > 9 and isinstance(entry[9], list) else []
        for item in [entry, *subcommands]:
            assert isinstance(item, list)
            name = item[0].decode() if isinstance(item[0], bytes) else str(item[0])
            flags = {f.decode() if isinstance(f, bytes) else str(f) for f in item[2] or []}
            found[name.upper().replace("|", " ")] = flags
    return found


def test_every_readonly_command_of_the_server_is_idempotent(redis_server: Any) -> None:
    commands = server_commands(redis_server)
    readonly = {n for n, flags in commands.items() if "readonly" in flags and "write" not in flags}
    missing = sorted(n for n in readonly - READONLY_EXCEPTIONS if n not in backend.TABLE)
    wrong = sorted(
        n for n in readonly if n in backend.TABLE and backend.TABLE[n].idempotent is False
    )
    assert missing == [], f"readonly commands missing from the table: {missing}"
    assert wrong == [], f"readonly commands marked non-idempotent: {wrong}"


def test_table_writes_are_writes_and_table_names_exist(redis_server: Any) -> None:
    commands = server_commands(redis_server)
    writes = set(backend._words(backend.IDEMPOTENT_WRITES)) | set(backend.ARG_DEPENDENT)
    unknown = sorted(n for n in backend.TABLE if n not in commands)
    flagged_read = sorted(n for n in writes if n in commands and "readonly" in commands[n])
    # Commands newer than this server (or removed) may be listed; report, do not fail.
    print(f"table commands this server does not know: {unknown}")
    assert flagged_read == [], f"listed as writes but flagged readonly: {flagged_read}"


def test_every_server_write_not_in_the_table_is_non_idempotent(redis_server: Any) -> None:
    commands = server_commands(redis_server)
    for name, flags in commands.items():
        if "write" in flags and name not in backend.TABLE:
            assert not backend.is_idempotent(name.split(" ")), name


def test_learn_commands_from_the_server(redis_server: Any, guarded: Any) -> None:
    client = guarded(redis_server.url)
    # Everything the server flags readonly is already in the table: nothing to learn.
    assert poolguard.redis.learn_commands(client) == 0
