"""Redis knowledge: error replies → Classification, which commands are idempotent, which block.

Tables and small pure functions only: :func:`classify`, :func:`is_idempotent`,
:func:`block_seconds`, :func:`learn` (readonly commands a server reports that the table lacks) and
:func:`mark_connect_phase`. ``integrations/redis/_common.py`` wires them into redis-py and
``core/disposition.py`` decides what a Classification allows. Rules, in the words of DESIGN.md
"Retry safety":

- A reply the server sends *before* executing (LOADING, BUSY, MASTERDOWN, TRYAGAIN, CLUSTERDOWN,
  READONLY, NOREPLICAS, max clients) is safe to retry for any command.
- A connect failure (refused, connect timeout, handshake) is safe to retry for any command; the
  integration marks such errors with :func:`mark_connect_phase` because redis-py raises the same
  ``ConnectionError`` class on connect and on a lost reply.
- A lost or timed-out reply (the command may have run) is retried only for idempotent commands.
- Authentication errors are permanent even though redis-py makes ``AuthenticationError`` a
  ``ConnectionError`` subclass: a naive ``except ConnectionError: retry`` retries a wrong password.

Idempotency (see docs/redis.md "Idempotency table") is about *state*: a command is idempotent
when applying it twice leaves the data as one application would. Replies that count changes
(``DEL``, ``SADD``, ``HSET`` ... may report 0 on a retry) are accepted; commands whose *purpose*
is a conditional reply (``SET NX``, ``SETNX``, ``HSETNX``, ``EXPIRE NX|GT|LT``) are not, because
a retried lock acquisition would report "not acquired" while the caller holds the lock. Unknown
commands are non-idempotent. The server's own metadata agrees: every command the server flags
``readonly`` is idempotent here (checked against a real server in
``tests/integration/redis/test_command_table.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.exceptions as rex

from poolguard.core.disposition import Classification, Disposition, Scope

__all__ = [
    "ACQUIRE_TIMEOUT_MESSAGE",
    "BLOCK_FOREVER",
    "CommandInfo",
    "block_seconds",
    "classify",
    "command_info",
    "command_name",
    "is_connect_phase",
    "is_idempotent",
    "mark_connect_phase",
]

#: redis-py's BlockingConnectionPool message when no connection freed up within ``timeout``.
ACQUIRE_TIMEOUT_MESSAGE = "No connection available."

#: Attribute set on an exception raised while opening a connection (before any command).
CONNECT_PHASE_ATTR = "_poolguard_connect_phase"

# -- classification -------------------------------------------------------------------------

#: Error codes (first word of the reply) the server sends before executing: retry anything.
#: redis-py strips the code from the message and keeps it as ``exc.status_code``.
BEFORE_EXECUTION: dict[str, tuple[str, bool, Scope]] = {
    # code: (reason, disconnect, scope)
    "LOADING": ("loading", False, Scope.NONE),
    "BUSY": ("busy_script", False, Scope.NONE),
    "MASTERDOWN": ("master_down", False, Scope.NONE),
    "TRYAGAIN": ("try_again", False, Scope.NONE),
    "CLUSTERDOWN": ("cluster_down", False, Scope.NONE),
    # After a failover the old master is a replica: drop the connection so the next attempt
    # connects (through DNS / Sentinel) to the new master, and suspect every older connection.
    "READONLY": ("readonly_replica", True, Scope.POOL),
    "NOREPLICAS": ("no_replicas", False, Scope.NONE),
}

#: Sent on accept when ``maxclients`` is reached, then the server closes (before any command).
TOO_MANY_CLIENTS = "max number of clients reached"

#: redis-py's Sentinel connection turns READONLY from a demoted master into this ConnectionError
#: (after dropping the connection): the command was rejected, not executed.
DEMOTED_MASTER = "The previous master is now a slave"

#: Error codes that are permanent whatever redis-py's class says.
AUTH_CODES = frozenset({"NOAUTH", "WRONGPASS", "NOPERM"})


def mark_connect_phase(exc: BaseException) -> None:
    """Tag ``exc`` as raised while connecting: no command can have reached the server."""
    try:
        setattr(exc, CONNECT_PHASE_ATTR, True)
    except AttributeError:  # pragma: no cover - exotic exceptions with __slots__
        pass


def is_connect_phase(exc: BaseException) -> bool:
    return bool(getattr(exc, CONNECT_PHASE_ATTR, False))


def error_code(exc: BaseException) -> str:
    """``LOADING``, ``READONLY``, ``ERR`` ...: redis-py's ``status_code``, else the first word."""
    code = getattr(exc, "status_code", None)
    if isinstance(code, str) and code:
        return code
    message = str(exc.args[0]) if exc.args else ""
    first = message.split(" ", 1)[0]
    return first if first.isupper() else ""


def _reply_rule(exc: BaseException) -> Classification | None:
    code = error_code(exc)
    rule = BEFORE_EXECUTION.get(code)
    if rule is not None:
        reason, disconnect, scope = rule
        return Classification(Disposition.RETRY, reason, disconnect=disconnect, scope=scope)
    if code in AUTH_CODES:
        return Classification(Disposition.FAIL, "auth")
    message = str(exc.args[0]) if exc.args else ""
    if message == DEMOTED_MASTER:
        return Classification(
            Disposition.RETRY, "readonly_replica", disconnect=True, scope=Scope.POOL
        )
    if TOO_MANY_CLIENTS in message:
        return Classification(
            Disposition.RETRY, "too_many_clients", disconnect=True, connect_phase=True
        )
    return None


def classify(exc: BaseException) -> Classification:
    """What ``exc`` (raised by redis-py) says about retry safety."""
    # Order matters: these three subclass ConnectionError in redis-py.
    if isinstance(exc, rex.AuthenticationError | rex.AuthorizationError):
        return Classification(Disposition.FAIL, "auth")
    if isinstance(exc, rex.BusyLoadingError):
        return Classification(Disposition.RETRY, "loading")
    if isinstance(exc, rex.MaxConnectionsError):
        # The client-side pool is full; waiting is the acquire timeout's job, not the loop's.
        return Classification(Disposition.FAIL, "pool_exhausted")
    rule = _reply_rule(exc)
    if isinstance(exc, rex.ResponseError):
        return rule or Classification(Disposition.FAIL, "error_reply")
    if isinstance(exc, rex.ConnectionError | rex.TimeoutError | OSError):
        if rule is not None:
            return rule
        timeout = isinstance(exc, rex.TimeoutError | TimeoutError)
        if is_connect_phase(exc):
            return Classification(
                Disposition.RETRY,
                "connect_timeout" if timeout else "connect_failed",
                disconnect=True,
                scope=Scope.CONNECTION,
                connect_phase=True,
            )
        return Classification(
            Disposition.RETRY_IF_IDEMPOTENT,
            "read_timeout" if timeout else "connection_lost",
            disconnect=True,
            scope=Scope.POOL if timeout else Scope.CONNECTION,
        )
    if isinstance(exc, rex.InvalidResponse):
        # The stream is out of sync: the connection is unusable, the command may have run.
        return Classification(Disposition.RETRY_IF_IDEMPOTENT, "protocol_error", disconnect=True)
    # WatchError, DataError, PubSubError, LockError, TypeError ...: never retried.
    return Classification(Disposition.FAIL, type(exc).__name__.lower())


# -- command table --------------------------------------------------------------------------

Rule = bool | Callable[[Sequence[Any]], bool]
BlockRule = Callable[[Sequence[Any]], float | None]

#: Sentinel from :func:`block_seconds`: the command may block forever (timeout 0).
BLOCK_FOREVER = -1.0

READS = """
    BITCOUNT BITFIELD_RO BITPOS DBSIZE DUMP EXISTS EXPIRETIME GEODIST GEOHASH GEOPOS
    GEORADIUS_RO GEORADIUSBYMEMBER_RO GEOSEARCH GET GETBIT GETRANGE HEXISTS HGET HGETALL HKEYS
    HLEN HMGET HRANDFIELD HSCAN HSTRLEN HVALS KEYS LCS LINDEX LLEN LOLWUT LPOS LRANGE MGET
    PEXPIRETIME PFCOUNT PTTL RANDOMKEY SCAN SCARD SDIFF SINTER SINTERCARD SISMEMBER SMEMBERS
    SMISMEMBER SORT_RO SRANDMEMBER SSCAN STRLEN SUBSTR SUNION TOUCH TTL TYPE XLEN XPENDING XRANGE
    XREAD XREVRANGE ZCARD ZCOUNT ZDIFF ZINTER ZINTERCARD ZLEXCOUNT ZMSCORE ZRANDMEMBER ZRANGE
    ZRANGEBYLEX ZRANGEBYSCORE ZRANK ZREVRANGE ZREVRANGEBYLEX ZREVRANGEBYSCORE ZREVRANK ZSCAN
    ZSCORE ZUNION
    EVAL_RO EVALSHA_RO FCALL_RO
    PING ECHO TIME INFO LASTSAVE ROLE WAIT WAITAOF READONLY READWRITE
    MEMORY|USAGE MEMORY|STATS MEMORY|DOCTOR OBJECT|ENCODING OBJECT|FREQ
    OBJECT|IDLETIME OBJECT|REFCOUNT XINFO|CONSUMERS XINFO|GROUPS XINFO|STREAM
    CONFIG|GET CLIENT|LIST CLIENT|INFO CLIENT|ID CLIENT|GETNAME
    CLIENT|TRACKINGINFO COMMAND COMMAND|COUNT COMMAND|DOCS COMMAND|INFO
    COMMAND|LIST COMMAND|GETKEYS SLOWLOG|GET SLOWLOG|LEN LATENCY|LATEST
    LATENCY|HISTORY LATENCY|DOCTOR PUBSUB|CHANNELS PUBSUB|NUMSUB PUBSUB|NUMPAT
    PUBSUB|SHARDCHANNELS PUBSUB|SHARDNUMSUB SCRIPT|EXISTS FUNCTION|LIST
    FUNCTION|DUMP FUNCTION|STATS ACL|WHOAMI ACL|LIST ACL|USERS ACL|GETUSER
    ACL|CAT ACL|LOG
"""

#: Writes that leave the same state when applied twice (replies that count changes may differ).
IDEMPOTENT_WRITES = """
    SETEX PSETEX MSET SETRANGE LSET HSET HMSET HDEL SADD SREM SMOVE DEL UNLINK
    PERSIST ZREM ZREMRANGEBYSCORE ZREMRANGEBYLEX PFADD PFMERGE GEOADD XDEL XACK XTRIM XSETID
    SETBIT MOVE FLUSHDB FLUSHALL GETEX
    CONFIG|SET CONFIG|RESETSTAT SLOWLOG|RESET LATENCY|RESET SCRIPT|LOAD
    SCRIPT|FLUSH CLIENT|SETNAME CLIENT|SETINFO XGROUP|SETID XGROUP|DESTROY
    XGROUP|CREATECONSUMER XGROUP|DELCONSUMER
"""

#: Explicitly not idempotent (listed so the table documents the decision; unknown = same).
NON_IDEMPOTENT = """
    INCR INCRBY INCRBYFLOAT DECR DECRBY APPEND HINCRBY HINCRBYFLOAT ZINCRBY GETSET GETDEL SETNX
    HSETNX MSETNX LPUSH RPUSH LPUSHX RPUSHX LINSERT LPOP RPOP LMPOP LMOVE RPOPLPUSH BLPOP BRPOP
    BLMOVE BLMPOP BRPOPLPUSH SPOP ZPOPMIN ZPOPMAX ZMPOP BZPOPMIN BZPOPMAX BZMPOP ZREMRANGEBYRANK
    XADD XCLAIM XAUTOCLAIM XREADGROUP XGROUP|CREATE RENAME RENAMENX RESTORE SWAPDB BITFIELD
    PUBLISH SPUBLISH EVAL EVALSHA FCALL MULTI EXEC DISCARD WATCH UNWATCH FUNCTION|LOAD
    FUNCTION|DELETE FUNCTION|FLUSH FUNCTION|RESTORE DEBUG SHUTDOWN CLIENT|KILL
    CLIENT|PAUSE MIGRATE
"""

#: Container commands whose second word names the real command (``CONFIG GET``).
CONTAINERS = frozenset(
    [
        "ACL",
        "CLIENT",
        "CLUSTER",
        "COMMAND",
        "CONFIG",
        "FUNCTION",
        "LATENCY",
        "MEMORY",
        "MODULE",
        "OBJECT",
        "PUBSUB",
        "SCRIPT",
        "SLOWLOG",
        "XGROUP",
        "XINFO",
    ]
)


def _words(text: str) -> list[str]:
    return [w.replace("|", " ") for w in text.split()]


def _opts(args: Sequence[Any], start: int = 2) -> set[str]:
    """Upper-cased string arguments from ``start`` (options are matched, values are ignored)."""
    found = set()
    for arg in args[start:]:
        if isinstance(arg, bytes):
            arg = arg.decode("utf-8", "replace")
        if isinstance(arg, str) and len(arg) <= 8:
            found.add(arg.upper())
    return found


def _set(args: Sequence[Any]) -> bool:
    # SET key value [NX|XX] [GET] [EX|PX|EXAT|PXAT n|KEEPTTL]. GET returns the old value (the
    # retry would return the new one); NX is the lock primitive (the retry says "not acquired").
    # A relative EX/PX re-applied by a retry extends the TTL by the retry delay: accepted.
    opts = _opts(args, 3)
    return "GET" not in opts and "NX" not in opts


def _expire(args: Sequence[Any]) -> bool:
    # EXPIRE key seconds [NX|XX|GT|LT]: NX/GT/LT make the reply conditional (0 on the retry).
    return not (_opts(args, 3) & {"NX", "GT", "LT"})


def _zadd(args: Sequence[Any]) -> bool:
    return "INCR" not in _opts(args, 2)


def _copy(args: Sequence[Any]) -> bool:
    return True  # COPY src dst [DB n] [REPLACE]: same state; without REPLACE the retry says 0


def _arg(args: Sequence[Any], index: int) -> Any:
    return args[index] if len(args) > index else None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, str):
        a = a.encode()
    if isinstance(b, str):
        b = b.encode()
    return bool(a == b)


def _store_dest_first(args: Sequence[Any]) -> bool:
    # SUNIONSTORE dest k1 k2 ...: idempotent unless dest is also a source (dest = dest OR ...
    # is, but SDIFFSTORE dest a dest and ZUNIONSTORE dest 2 dest x (scores add up) are not).
    dest = _arg(args, 1)
    return not any(_same(dest, k) for k in args[2:])


def _bitop(args: Sequence[Any]) -> bool:
    dest = _arg(args, 2)
    return not any(_same(dest, k) for k in args[3:])


def _lrem(args: Sequence[Any]) -> bool:
    return _int(_arg(args, 2)) == 0  # LREM key 0 value removes all: a retry removes nothing


def _ltrim(args: Sequence[Any]) -> bool:
    # LTRIM key 0 99 keeps a prefix (same after a retry); LTRIM key 1 -1 drops one more each time.
    start, stop = _int(_arg(args, 2)), _int(_arg(args, 3))
    if start is None or stop is None:
        return False
    return (start == 0 and (stop >= 0 or stop == -1)) or (start < 0 and stop == -1)


def _sort(args: Sequence[Any]) -> bool:
    # SORT key ... [STORE dest]: a read without STORE; with STORE idempotent unless dest == key.
    for i in range(2, len(args)):
        if _same(_upper(args[i]), b"STORE"):
            return not _same(_arg(args, i + 1), _arg(args, 1))
    return True


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str | bytes) else value


def _georadius(args: Sequence[Any]) -> bool:
    return not (_opts(args, 2) & {"STORE", "STOREDIST"})


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


ARG_DEPENDENT: dict[str, Callable[[Sequence[Any]], bool]] = {
    "SET": _set,
    "EXPIRE": _expire,
    "PEXPIRE": _expire,
    "EXPIREAT": _expire,
    "PEXPIREAT": _expire,
    "ZADD": _zadd,
    "COPY": _copy,
    "SUNIONSTORE": _store_dest_first,
    "SINTERSTORE": _store_dest_first,
    "SDIFFSTORE": _store_dest_first,
    "ZUNIONSTORE": _store_dest_first,
    "ZINTERSTORE": _store_dest_first,
    "ZDIFFSTORE": _store_dest_first,
    "ZRANGESTORE": _store_dest_first,
    "GEOSEARCHSTORE": _store_dest_first,
    "BITOP": _bitop,
    "LREM": _lrem,
    "LTRIM": _ltrim,
    "SORT": _sort,
    "GEORADIUS": _georadius,
    "GEORADIUSBYMEMBER": _georadius,
}


# -- blocking commands ----------------------------------------------------------------------


def _last_seconds(args: Sequence[Any]) -> float | None:
    return _seconds(_arg(args, len(args) - 1))


def _first_seconds(args: Sequence[Any]) -> float | None:
    return _seconds(_arg(args, 1))  # BLMPOP timeout numkeys ..., BZMPOP likewise


def _last_millis(args: Sequence[Any]) -> float | None:
    value = _seconds(_arg(args, len(args) - 1))
    return None if value is None else (BLOCK_FOREVER if value == BLOCK_FOREVER else value / 1000)


def _xread_block(args: Sequence[Any]) -> float | None:
    # XREAD [COUNT n] [BLOCK ms] STREAMS ...: only the options before STREAMS count.
    for i in range(1, len(args)):
        word = _upper(args[i])
        if _same(word, b"STREAMS"):
            break
        if _same(word, b"BLOCK"):
            ms = _seconds(_arg(args, i + 1))
            if ms is None or ms == BLOCK_FOREVER:
                return ms
            return ms / 1000
    return None


def _seconds(value: Any) -> float | None:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return BLOCK_FOREVER if seconds == 0 else seconds


BLOCKING: dict[str, BlockRule] = {
    "BLPOP": _last_seconds,
    "BRPOP": _last_seconds,
    "BRPOPLPUSH": _last_seconds,
    "BLMOVE": _last_seconds,
    "BZPOPMIN": _last_seconds,
    "BZPOPMAX": _last_seconds,
    "BLMPOP": _first_seconds,
    "BZMPOP": _first_seconds,
    "XREAD": _xread_block,
    "XREADGROUP": _xread_block,
    "WAIT": _last_millis,
    "WAITAOF": _last_millis,
}


# -- lookups (cached: the hot path does one dict get) ----------------------------------------


@dataclass(frozen=True, slots=True)
class CommandInfo:
    """What poolguard knows about one command name."""

    name: str
    idempotent: Rule
    """True/False, or a function of the full argument list."""
    block: BlockRule | None = None
    """Returns the block time in seconds (BLOCK_FOREVER for 0) when the command blocks."""


def _build_table() -> dict[str, CommandInfo]:
    table: dict[str, CommandInfo] = {}
    for name in _words(NON_IDEMPOTENT):
        table[name] = CommandInfo(name, False, BLOCKING.get(name))
    for name in _words(READS) + _words(IDEMPOTENT_WRITES):
        table[name] = CommandInfo(name, True, BLOCKING.get(name))
    for name, rule in ARG_DEPENDENT.items():
        table[name] = CommandInfo(name, rule, BLOCKING.get(name))
    return table


#: The explicit table, keyed by upper-case name (``"CONFIG GET"`` for container commands).
TABLE: dict[str, CommandInfo] = _build_table()
# Keyed by ``args[0]`` exactly as redis-py sends it. Container names (``COMMAND``, ``CONFIG``)
# are never cached: their meaning depends on the second word.
_cache: dict[Any, CommandInfo] = {k: v for k, v in TABLE.items() if k not in CONTAINERS}
_CACHE_LIMIT = 4096


def command_name(args: Sequence[Any]) -> str:
    """The table key for a command: ``GET``, ``CONFIG GET`` (redis-py sends either form)."""
    first = args[0]
    if isinstance(first, bytes):
        first = first.decode("utf-8", "replace")
    name = str(first).upper()
    if name in CONTAINERS and len(args) > 1 and " " not in name:
        second = args[1]
        if isinstance(second, bytes):
            second = second.decode("utf-8", "replace")
        name = f"{name} {str(second).upper()}"
    return name


def _unknown(name: str) -> CommandInfo:
    return CommandInfo(name, False)


def command_info(args: Sequence[Any]) -> CommandInfo:
    """The :class:`CommandInfo` for ``args`` (unknown commands: non-idempotent, not blocking)."""
    first = args[0]
    info = _cache.get(first)
    if info is not None:
        return info
    name = command_name(args)
    info = TABLE.get(name) or _unknown(name)
    if (
        " " not in name
        and name not in CONTAINERS
        and len(_cache) < _CACHE_LIMIT
        and isinstance(first, str | bytes)
    ):
        _cache[first] = info  # e.g. "get" or b"GET" as the caller spelled it
    return info


#: The hot path's spelling of :func:`command_info`: ``lookup(args[0]) or command_info(args)``.
lookup = _cache.get


def is_idempotent(args: Sequence[Any]) -> bool:
    """True when ``args`` (a full command) may safely be applied twice."""
    rule = command_info(args).idempotent
    return rule if isinstance(rule, bool) else rule(args)


def block_seconds(args: Sequence[Any]) -> float | None:
    """Seconds the command may block server-side, BLOCK_FOREVER, or None (does not block)."""
    rule = command_info(args).block
    return None if rule is None else rule(args)


def learn(commands: dict[str, dict[str, Any]]) -> int:
    """Add commands the table lacks from the server's ``COMMAND INFO`` (redis-py's parsed form).

    Only the sound direction: a command the server flags ``readonly`` never modifies data, so it
    is idempotent. Everything else stays unknown (non-idempotent). Returns how many were added;
    used for module commands (``JSON.GET``), see :func:`poolguard.redis.learn_commands`.
    """
    added = 0
    for raw_name, meta in commands.items():
        name = str(raw_name).upper()
        flags = {str(f).lower() for f in meta.get("flags", ())}
        if name in TABLE or "readonly" not in flags or "write" in flags or "blocking" in flags:
            continue
        TABLE[name] = CommandInfo(name, True)
        if name not in CONTAINERS:
            _cache[name] = TABLE[name]
        added += 1
    return added
