"""Statement shape shared by the SQL backends: is this statement a plain read?

The retry-safety rule lets poolguard re-run a statement whose reply was lost only when running it
twice cannot change anything. :func:`is_read_statement` answers that from the SQL text, and it is
*conservative*: a false "no" costs one surfaced error during an outage, a false "yes" could apply
a write twice. So it says yes only to

- a statement starting with ``SELECT``, ``WITH``, ``VALUES``, ``TABLE``, ``SHOW`` or ``EXPLAIN``;
- with no write keyword anywhere outside literals (``INSERT``/``UPDATE``/``DELETE``/``MERGE``,
  ``INTO`` for ``SELECT ... INTO``): this rejects data-modifying CTEs;
- with no row-locking clause (``FOR UPDATE``, ``FOR NO KEY UPDATE``, ``FOR SHARE``,
  ``FOR KEY SHARE``, MySQL ``LOCK IN SHARE MODE``);
- ``EXPLAIN`` only of a read (``EXPLAIN ANALYZE`` runs its statement);
- calling only functions known to have no side effects (``count``, ``coalesce``, ``now`` ...):
  a user-defined function called from a SELECT may write, and ``nextval``, ``pg_advisory_lock``,
  ``txid_current``, ``dblink`` do; so does any function not in the allow-list;
- and a single statement (a ``;`` followed by more text is rejected).

The tokenizer knows comments (``--``, nested ``/* */``, MySQL ``#`` when asked), string literals
(``'...'`` with doubled quotes, ``E'...'`` with backslash escapes, PostgreSQL ``$tag$...$tag$``),
and quoted identifiers (``"..."``, MySQL backticks). Backend modules supply their own extra
dangerous and safe functions as a :class:`SqlRules` (``postgres.py``, ``mysql.py``). Results are
cached by SQL text: SQLAlchemy renders the same string for each compiled statement, so the parse
runs once per distinct statement.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

__all__ = ["SqlRules", "is_read_statement", "tokens"]

#: First keywords of statements that only read (when nothing below says otherwise).
READ_STARTS = frozenset({"select", "with", "values", "table", "show", "explain"})

#: Keywords that turn a read-looking statement into a write wherever they appear: data-modifying
#: CTEs (``WITH x AS (DELETE ...)``) and ``SELECT ... INTO new_table``. DDL and utility words need
#: no entry: they can only start a statement, and the first word must be a read.
WRITE_KEYWORDS = frozenset({"insert", "update", "delete", "merge", "into"})

#: Row-locking clauses: ``FOR UPDATE`` / ``FOR NO KEY UPDATE`` / ``FOR SHARE`` / ``FOR KEY SHARE``
#: (PostgreSQL) and ``LOCK IN SHARE MODE`` (MySQL), as (word, next word) pairs.
LOCKING_PAIRS = frozenset(
    {("for", "update"), ("for", "share"), ("for", "no"), ("for", "key"), ("lock", "in")}
)

#: What EXPLAIN may wrap and still be a read (``EXPLAIN ANALYZE`` executes its statement).
EXPLAINABLE_READS = frozenset({"select", "with", "values", "table"})
_EXPLAIN_TARGETS = EXPLAINABLE_READS | {
    "insert", "update", "delete", "merge", "create", "execute", "declare", "refresh",
}  # fmt: skip

#: Words that may precede "(" without being a function call.
PAREN_KEYWORDS = frozenset(
    {
        "select", "from", "join", "in", "as", "on", "and", "or", "not", "where", "exists",
        "values", "using", "by", "when", "then", "else", "lateral", "any", "all", "some",
        "over", "filter", "group", "is", "case", "union", "intersect", "except", "having",
        "limit", "offset", "between", "like", "ilike", "distinct", "row", "array", "cast",
        "with", "recursive", "materialized", "fetch", "window", "partition", "order", "set",
        "explain", "returning", "tablesample", "similar", "to", "escape", "interval", "at",
        "zone", "asc", "desc", "nulls", "first", "last", "only", "inner", "left", "right",
        "full", "outer", "cross", "natural", "range", "rows", "preceding", "following",
        "within", "collate", "is_distinct", "default", "of", "for",
    }
)  # fmt: skip

#: Functions with no side effects (the common SQL and PostgreSQL built-ins ORMs emit).
SAFE_FUNCTIONS = frozenset(
    {
        "count", "sum", "avg", "min", "max", "coalesce", "nullif", "greatest", "least",
        "now", "current_timestamp", "current_date", "current_time", "localtimestamp",
        "lower", "upper", "length", "char_length", "character_length", "octet_length",
        "substring", "substr", "trim", "btrim", "ltrim", "rtrim", "lpad", "rpad",
        "concat", "concat_ws", "format", "position", "strpos", "split_part", "left", "right",
        "repeat", "reverse", "initcap", "md5", "encode", "decode", "translate", "starts_with",
        "regexp_replace", "regexp_match", "regexp_matches", "regexp_split_to_array",
        "to_char", "to_date", "to_timestamp", "to_number", "date_trunc", "date_part",
        "extract", "age", "make_date", "make_interval", "justify_interval", "timezone",
        "abs", "round", "floor", "ceil", "ceiling", "mod", "power", "sqrt", "exp", "ln",
        "log", "sign", "trunc", "div", "random", "gen_random_uuid", "width_bucket",
        "array_agg", "string_agg", "json_agg", "jsonb_agg", "json_object_agg",
        "jsonb_object_agg", "json_build_object", "jsonb_build_object", "json_build_array",
        "jsonb_build_array", "to_json", "to_jsonb", "row_to_json", "array_to_json",
        "jsonb_array_elements", "json_array_elements", "jsonb_each", "json_each",
        "jsonb_extract_path", "json_extract_path", "jsonb_extract_path_text",
        "json_extract_path_text", "jsonb_typeof", "json_typeof", "jsonb_array_length",
        "json_array_length", "jsonb_strip_nulls", "jsonb_set", "jsonb_path_query",
        "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile", "lag",
        "lead", "first_value", "last_value", "nth_value", "bool_and", "bool_or", "every",
        "percentile_cont", "percentile_disc", "mode", "stddev", "variance",
        "array_length", "array_position", "array_remove", "array_append", "array_cat",
        "cardinality", "unnest", "generate_series", "exists", "pg_sleep", "version",
        "current_setting", "current_schema", "current_user", "current_database",
        "pg_backend_pid", "pg_is_in_recovery", "pg_postmaster_start_time",
        "pg_typeof", "pg_table_size", "pg_relation_size", "pg_total_relation_size",
        "pg_database_size", "pg_size_pretty", "pg_get_serial_sequence", "has_table_privilege",
        "pg_xact_status", "txid_status", "to_regclass", "pg_get_indexdef", "quote_ident",
        "pg_current_wal_lsn", "pg_walfile_name",
        "quote_literal", "if", "ifnull", "date", "hex", "unhex", "uuid", "database",
        "group_concat", "date_format", "str_to_date", "unix_timestamp", "from_unixtime",
        "found_rows", "last_insert_id", "connection_id", "char", "ascii", "ord", "instr",
        "locate", "json_extract", "json_unquote", "json_object", "json_array", "utc_timestamp",
        "sysdate", "curdate", "curtime", "datediff", "timestampdiff", "date_add", "date_sub",
        "isnull", "field", "elt", "crc32", "sha1", "sha2",
    }
)  # fmt: skip


@dataclass(frozen=True)
class SqlRules:
    """What one SQL dialect adds to the shared rules."""

    unsafe_functions: frozenset[str] = frozenset()
    """Functions with side effects that must never be retried (documentation and tests: any
    function not in ``safe_functions`` is already rejected)."""
    safe_functions: frozenset[str] = SAFE_FUNCTIONS
    hash_comments: bool = False
    """MySQL: ``#`` starts a comment."""
    backtick_identifiers: bool = False
    dollar_quotes: bool = True
    """PostgreSQL ``$tag$ ... $tag$`` strings."""


DEFAULT_RULES = SqlRules()

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")


def tokens(sql: str, rules: SqlRules = DEFAULT_RULES) -> list[str]:
    """Lower-cased words and single punctuation characters outside comments and literals.

    A string literal becomes ``'`` and a quoted identifier ``"``; an unterminated literal or
    comment ends the scan with a ``\\0`` token (callers treat it as "not a read").
    """
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c.isspace():
            i += 1
        elif (c == "-" and sql.startswith("--", i)) or (c == "#" and rules.hash_comments):
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
        elif c == "/" and sql.startswith("/*", i):
            i = _skip_block_comment(sql, i)
            if i < 0:
                out.append("\0")
                return out
        elif c == "'" or (c in "eE" and sql.startswith("'", i + 1)):
            i = _skip_quoted(sql, i + 1 if c != "'" else i, "'", backslash=c != "'")
            out.append("'" if i >= 0 else "\0")
            if i < 0:
                return out
        elif c == '"' or (c == "`" and rules.backtick_identifiers):
            i = _skip_quoted(sql, i, c, backslash=False)
            out.append('"' if i >= 0 else "\0")
            if i < 0:
                return out
        elif c == "$" and rules.dollar_quotes and (m := _DOLLAR_TAG.match(sql, i)):
            end = sql.find(m.group(0), m.end())
            if end < 0:
                out.append("\0")
                return out
            out.append("'")
            i = end + len(m.group(0))
        elif m := _WORD.match(sql, i):
            out.append(m.group(0).lower())
            i = m.end()
        else:
            out.append(c)
            i += 1
    return out


def _skip_block_comment(sql: str, i: int) -> int:
    """Index after the (possibly nested) comment starting at ``i``, or -1 if unterminated."""
    depth, i, n = 0, i, len(sql)
    while i < n:
        if sql.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif sql.startswith("*/", i):
            depth, i = depth - 1, i + 2
            if depth == 0:
                return i
        else:
            i += 1
    return -1


def _skip_quoted(sql: str, i: int, quote: str, *, backslash: bool) -> int:
    """Index after the literal opening at ``i`` (doubled quotes escape), or -1."""
    i, n = i + 1, len(sql)
    while i < n:
        c = sql[i]
        if backslash and c == "\\":
            i += 2
        elif c == quote:
            if i + 1 < n and sql[i + 1] == quote:
                i += 2
            else:
                return i + 1
        else:
            i += 1
    return -1


@functools.lru_cache(maxsize=2048)
def is_read_statement(sql: str, rules: SqlRules = DEFAULT_RULES) -> bool:
    """True only when ``sql`` is one statement that cannot change anything if run twice."""
    toks = tokens(sql, rules)
    while toks and toks[0] == "(":
        toks = toks[1:]
    if not toks or toks[0] not in READ_STARTS or "\0" in toks:
        return False
    if toks[0] == "explain" and not _explains_a_read(toks):
        return False
    for index, tok in enumerate(toks):
        if tok in WRITE_KEYWORDS:
            return False
        if index + 1 < len(toks) and (tok, toks[index + 1]) in LOCKING_PAIRS:
            return False
        if tok == ";" and any(t != ";" for t in toks[index + 1 :]):
            return False
        if tok == "(" and index > 0 and not _call_is_safe(toks, index, rules):
            return False
    return True


def _explains_a_read(toks: list[str]) -> bool:
    target = next((t for t in toks[1:] if t in _EXPLAIN_TARGETS), None)
    return target in EXPLAINABLE_READS


def _call_is_safe(toks: list[str], paren: int, rules: SqlRules) -> bool:
    """Is the "(" at ``paren`` a keyword's parenthesis or a call of a side-effect-free function?"""
    name = toks[paren - 1]
    if not _WORD.fullmatch(name):
        return name != '"'  # "(" after punctuation is grouping; after a quoted name, a call
    if paren >= 2 and toks[paren - 2] == ".":
        # schema-qualified: only pg_catalog's built-ins are known
        schema = toks[paren - 3] if paren >= 3 else ""
        return schema == "pg_catalog" and name in rules.safe_functions
    if name in rules.unsafe_functions:
        return False
    return name in PAREN_KEYWORDS or name in rules.safe_functions
