#!/usr/bin/env python
"""Write poolguard's sync modules from their asyncio twins, so the two cannot drift (issue 14).

One source per integration: the asyncio module is edited by hand, the sync module is generated
by this script (``make generate``) and CI fails when it is not current (``make generate-check``,
part of ``make lint``). The model is psycopg's ``tools/async_to_sync.py``; unlike psycopg this
works on libcst's concrete syntax tree, not on ``ast``: comments (``# type: ignore[...]`` on their
own line), blank lines and string layout come out where the author put them, and the output does
not depend on the Python version that runs the script.

What the async source gets turned into:

- ``async def``/``async with``/``async for`` and async comprehensions lose ``async``;
  ``await x`` becomes ``x``.
- Every name in :data:`NAMES` and dotted name in :data:`MODULES` is renamed, in code and in
  strings and comments (whole words only): ``AsyncGuardedRedis`` -> ``GuardedRedis``,
  ``redis.asyncio.client`` -> ``redis.client``, ``asyncio.sleep`` -> ``time.sleep``. Inside
  ````literal```` spans of docstrings and comments ``await``/``async`` are dropped too.
- ``Awaitable[T]`` and ``Coroutine[Any, Any, T]`` become ``T``; ``AsyncGenerator[Y, S]`` becomes
  ``Generator[Y, S, None]``.
- Code only one side needs is marked in the async source, as in psycopg::

      if True:  # ASYNC
          ...  # asyncio only: dropped from the sync module
      else:
          ...  # sync only: kept, dedented, in the sync module

  An ``elif x:`` in place of the ``else:`` becomes ``if x:``. ``if False:  # ASYNC`` keeps its
  body in the sync module (and drops its ``else``). Write the sync side with ``await`` where
  the call is async in the source (it is stripped like everywhere else). mypy skips the branch
  that cannot run, so a ``# type: ignore[code]`` needed only by the sync side is written
  ``# type: ignore[code,unused-ignore]`` (``warn_unused_ignores`` is on). ruff's SIM108 asks
  for a ternary when each side is one assignment: ``if True:  # ASYNC  # noqa: SIM108``.
- A module the renamed code needs (``time`` for ``time.sleep``) is imported if it was not.
- The result gets the "generated" header, its imports sorted and the ones left unused removed
  (``ruff check --fix-only --select I,F401``), and is formatted (``ruff format``), both with the
  project's ruff settings.

Run ``python tools/async_to_sync.py --help`` for the command line; :data:`PAIRS` lists the
generated modules.
"""

from __future__ import annotations

import argparse
import difflib
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import libcst as cst
from libcst.codemod import CodemodContext
from libcst.codemod.visitors import AddImportsVisitor

PROJECT_DIR = Path(__file__).resolve().parent.parent
SCRIPT = "tools/async_to_sync.py"

#: Async source -> generated sync module, relative to the project directory.
PAIRS: dict[str, str] = {
    # Filled in as each integration is converted (issue 14).
    "poolguard/integrations/psycopg_pool/pool_async.py": (
        "poolguard/integrations/psycopg_pool/pool.py"
    ),
    "poolguard/integrations/redis/asyncio.py": "poolguard/integrations/redis/sync.py",
}

#: Identifiers renamed in code (names, attributes, parameters, imports) and, as whole words, in
#: strings and comments.
NAMES: dict[str, str] = {
    # Python and the standard library.
    "AsyncExitStack": "ExitStack",
    "AsyncGenerator": "Generator",
    "AsyncIterable": "Iterable",
    "AsyncIterator": "Iterator",
    "StopAsyncIteration": "StopIteration",
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
    "__aiter__": "__iter__",
    "__anext__": "__next__",
    "aclosing": "closing",
    "aiter": "iter",
    "anext": "next",
    "asynccontextmanager": "contextmanager",
    # poolguard's core.
    "arun_with": "run_with",
    # psycopg and psycopg_pool.
    "AsyncConnection": "Connection",
    "AsyncConnectionPool": "ConnectionPool",
    "AsyncCursor": "Cursor",
    "AsyncNullConnectionPool": "NullConnectionPool",
    "AsyncPipeline": "Pipeline",
    "AsyncServerCursor": "ServerCursor",
    "AsyncTransaction": "Transaction",
    # poolguard.integrations.psycopg_pool and poolguard.postgres.
    "GuardedAsyncConnection": "GuardedConnection",
    "GuardedAsyncConnectionPool": "GuardedConnectionPool",
    "AsyncKeepaliveMixin": "KeepaliveMixin",
    "create_async_pool": "create_pool",
    # poolguard.integrations.redis.
    "AsyncGuardedBlockingConnectionPool": "GuardedBlockingConnectionPool",
    "AsyncGuardedConnection": "GuardedConnection",
    "AsyncGuardedPipeline": "GuardedPipeline",
    "AsyncGuardedPubSub": "GuardedPubSub",
    "AsyncGuardedRedis": "GuardedRedis",
    "AsyncGuardedSSLConnection": "GuardedSSLConnection",
    "AsyncGuardedSentinelConnection": "GuardedSentinelConnection",
    "AsyncGuardedSentinelPool": "GuardedSentinelPool",
    "AsyncGuardedUnixDomainSocketConnection": "GuardedUnixDomainSocketConnection",
    "AsyncPipelinePartiallyApplied": "PipelinePartiallyApplied",
    "_AsyncGuardedConnectionMixin": "_GuardedConnectionMixin",
    "async_from_url": "from_url",
}

#: Dotted names renamed where they start a name (``redis.asyncio.client`` -> ``redis.client``),
#: in code (attribute chains, imports) and in strings and comments.
MODULES: dict[str, str] = {
    "asyncio.Condition": "threading.Condition",
    "asyncio.Event": "threading.Event",
    "asyncio.Lock": "threading.Lock",
    "asyncio.Semaphore": "threading.Semaphore",
    "asyncio.sleep": "time.sleep",
    "redis.asyncio": "redis",
}

#: ``Awaitable[T]`` -> ``T``; ``Coroutine[Any, Any, T]`` -> ``T`` (the last argument).
UNWRAPPED = {"Awaitable", "Coroutine"}
ASYNC_MARK = "# ASYNC"
HEADER = (
    "# WARNING: generated from {source}\n"
    f"# by {SCRIPT} — edit the async source and run `make generate`.\n"
)
HEADER_RE = re.compile(r"\A# WARNING: generated from (\S+)\n# by " + re.escape(SCRIPT))
RUFF_FIXES = "I,F401"


class ConversionError(Exception):
    """The async source uses a construct this script cannot turn into sync code."""


def _words_pattern(names: Iterable[str], modules: Iterable[str]) -> re.Pattern[str]:
    # Longest first, so "redis.asyncio" wins over a shorter key it contains.
    dotted = "|".join(re.escape(m) for m in sorted(modules, key=len, reverse=True))
    plain = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(rf"(?<![\w.])(?:{dotted})(?!\w)|(?<!\w)(?:{plain})(?!\w)")


_WORDS = _words_pattern(NAMES, MODULES)
_LITERAL = re.compile(r"``(.+?)``")
_ASYNC_WORD = re.compile(r"\b(?:await|async)\s+")


def rename_words(text: str) -> str:
    """Rename table entries in prose (strings, comments); drop await/async in ``literals``."""
    text = _WORDS.sub(lambda m: MODULES.get(m[0]) or NAMES[m[0]], text)
    return _LITERAL.sub(lambda m: "``" + _ASYNC_WORD.sub("", m[1]) + "``", text)


def dotted_name(node: cst.BaseExpression) -> str | None:
    """``a.b.c`` for a chain of plain names, else None."""
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        base = dotted_name(node.value)
        return None if base is None else f"{base}.{node.attr.value}"
    return None


def _type_name(node: cst.BaseExpression) -> str | None:
    """``Awaitable`` for ``Awaitable`` and ``typing.Awaitable``."""
    if isinstance(node, cst.Attribute):
        return node.attr.value
    return node.value if isinstance(node, cst.Name) else None


def _async_marker(node: cst.If) -> bool | None:
    """True/False for ``if True:  # ASYNC`` / ``if False:  # ASYNC``, else None."""
    comment = node.body.header.comment if isinstance(node.body, cst.IndentedBlock) else None
    if comment is None or not comment.value.startswith(ASYNC_MARK):
        return None
    if not isinstance(node.test, cst.Name) or node.test.value not in ("True", "False"):
        raise ConversionError(f"'{ASYNC_MARK}' marks an if whose test is not True or False")
    return node.test.value == "True"


def _block_statements(block: cst.BaseSuite) -> list[cst.BaseStatement]:
    if isinstance(block, cst.IndentedBlock):
        return list(block.body)
    assert isinstance(block, cst.SimpleStatementSuite)  # the only other kind of block
    # `else: x = 1` on one line: its statements become a line of their own.
    line = cst.SimpleStatementLine(block.body, trailing_whitespace=block.trailing_whitespace)
    return [line]


class AsyncToSync(cst.CSTTransformer):
    """The syntax rules; the tables are module constants (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        #: Modules the renamed code refers to (``time`` for ``time.sleep``): imported if missing.
        self.needed_modules: set[str] = set()
        self._in_import = 0

    # -- async constructs -----------------------------------------------------------------------
    def leave_FunctionDef(
        self, original_node: cst.FunctionDef, updated_node: cst.FunctionDef
    ) -> cst.FunctionDef:
        return updated_node.with_changes(asynchronous=None)

    def leave_With(self, original_node: cst.With, updated_node: cst.With) -> cst.With:
        return updated_node.with_changes(asynchronous=None)

    def leave_For(self, original_node: cst.For, updated_node: cst.For) -> cst.For:
        return updated_node.with_changes(asynchronous=None)

    def leave_CompFor(self, original_node: cst.CompFor, updated_node: cst.CompFor) -> cst.CompFor:
        return updated_node.with_changes(asynchronous=None)

    def leave_Await(self, original_node: cst.Await, updated_node: cst.Await) -> cst.BaseExpression:
        inner = updated_node.expression
        # `(await x).y` needs its parentheses, `x.y` does not (an await operand is a primary).
        # Kept when the expression spans lines: there they may be what makes it valid.
        if "\n" in cst.Module(body=[]).code_for_node(inner):
            return inner.with_changes(lpar=updated_node.lpar, rpar=updated_node.rpar)
        return inner

    # -- names ----------------------------------------------------------------------------------
    def visit_Import(self, node: cst.Import) -> None:
        self._in_import += 1

    def leave_Import(self, original_node: cst.Import, updated_node: cst.Import) -> cst.Import:
        self._in_import -= 1
        return updated_node

    def visit_ImportFrom(self, node: cst.ImportFrom) -> None:
        self._in_import += 1

    def leave_ImportFrom(
        self, original_node: cst.ImportFrom, updated_node: cst.ImportFrom
    ) -> cst.ImportFrom:
        self._in_import -= 1
        return updated_node

    def leave_Name(self, original_node: cst.Name, updated_node: cst.Name) -> cst.Name:
        new = NAMES.get(updated_node.value)
        return updated_node if new is None else updated_node.with_changes(value=new)

    def leave_Attribute(
        self, original_node: cst.Attribute, updated_node: cst.Attribute
    ) -> cst.BaseExpression:
        # Children leave first, so "redis.asyncio" is replaced before "redis.asyncio.client"
        # is seen: an exact match at each level renames every prefix.
        old = dotted_name(updated_node) or ""
        new = MODULES.get(old)
        if new is None:
            return updated_node
        root = new.split(".")[0]
        if not self._in_import and root != old.split(".")[0]:  # asyncio.sleep -> time.sleep
            self.needed_modules.add(root)
        return cst.parse_expression(new).with_changes(
            lpar=updated_node.lpar, rpar=updated_node.rpar
        )

    def leave_Subscript(
        self, original_node: cst.Subscript, updated_node: cst.Subscript
    ) -> cst.BaseExpression:
        name = _type_name(original_node.value)  # original: NAMES has renamed the updated one
        elements = updated_node.slice
        if name in UNWRAPPED:
            last = elements[-1].slice
            if isinstance(last, cst.Index):
                return last.value
        if name == "AsyncGenerator" and len(elements) == 2:
            none = cst.SubscriptElement(cst.Index(cst.Name("None")))
            first = elements[0].with_changes(comma=cst.MaybeSentinel.DEFAULT)
            second = elements[1].with_changes(comma=cst.MaybeSentinel.DEFAULT)
            return updated_node.with_changes(slice=[first, second, none])
        return updated_node

    # -- prose ----------------------------------------------------------------------------------
    def leave_SimpleString(
        self, original_node: cst.SimpleString, updated_node: cst.SimpleString
    ) -> cst.SimpleString:
        return updated_node.with_changes(value=rename_words(updated_node.value))

    def leave_FormattedStringText(
        self, original_node: cst.FormattedStringText, updated_node: cst.FormattedStringText
    ) -> cst.FormattedStringText:
        return updated_node.with_changes(value=rename_words(updated_node.value))

    def leave_Comment(self, original_node: cst.Comment, updated_node: cst.Comment) -> cst.Comment:
        return updated_node.with_changes(value=rename_words(updated_node.value))

    # -- if True:  # ASYNC ----------------------------------------------------------------------
    def leave_If(
        self, original_node: cst.If, updated_node: cst.If
    ) -> cst.BaseStatement | cst.FlattenSentinel[cst.BaseStatement] | cst.RemovalSentinel:
        is_async = _async_marker(original_node)
        if is_async is None:
            return updated_node
        kept = _kept_branch(updated_node, is_async)
        if not kept:
            return cst.RemoveFromParent()
        # Blank lines and comments above the `if` now lead the first statement kept.
        first = kept[0]
        if isinstance(first, (cst.SimpleStatementLine, cst.BaseCompoundStatement)):
            leading = [*updated_node.leading_lines, *first.leading_lines]
            kept[0] = first.with_changes(leading_lines=leading)
        return cst.FlattenSentinel(kept)

    def leave_IndentedBlock(
        self, original_node: cst.IndentedBlock, updated_node: cst.IndentedBlock
    ) -> cst.IndentedBlock:
        # A block whose only statement was async-only code still needs a statement.
        if updated_node.body:
            return updated_node
        return updated_node.with_changes(body=[cst.SimpleStatementLine([cst.Pass()])])


def _kept_branch(node: cst.If, is_async: bool) -> list[cst.BaseStatement]:
    """The sync side of an ``if True|False:  # ASYNC`` block."""
    if not is_async:
        return _block_statements(node.body)
    if node.orelse is None:
        return []
    if isinstance(node.orelse, cst.If):  # `elif x:` becomes `if x:`
        return [node.orelse]
    return _block_statements(node.orelse.body)


def to_sync(source: str) -> str:
    """The syntax transform alone: async source text -> sync source text (not formatted)."""
    transformer = AsyncToSync()
    module = cst.parse_module(source).visit(transformer)
    context = CodemodContext()
    for name in sorted(transformer.needed_modules):
        AddImportsVisitor.add_needed_import(context, name)
    return AddImportsVisitor(context).transform_module(module).code


def _ruff(args: Sequence[str], source: str, filename: str) -> str:
    cmd = [sys.executable, "-m", "ruff", *args, "--config", str(PROJECT_DIR / "pyproject.toml")]
    cmd += ["--stdin-filename", filename, "-"]
    done = subprocess.run(
        cmd, input=source, capture_output=True, encoding="utf-8", cwd=PROJECT_DIR, check=False
    )
    if done.returncode != 0:
        raise ConversionError(f"{' '.join(cmd[2:4])} failed on {filename}:\n{done.stderr}")
    return done.stdout


def render(source: str, source_name: str, output_name: str) -> str:
    """The whole generated module: header, transformed code, imports fixed, ruff-formatted."""
    code = HEADER.format(source=source_name) + to_sync(source)
    code = _ruff(["check", "--fix-only", "--quiet", "--select", RUFF_FIXES], code, output_name)
    return _ruff(["format", "--quiet"], code, output_name)


def _project_name(path: Path) -> str:
    """The path as the header and messages show it: relative to the project when inside it."""
    resolved = path.resolve()
    if resolved.is_relative_to(PROJECT_DIR):
        return resolved.relative_to(PROJECT_DIR).as_posix()
    return path.as_posix()


def generate(source: Path, output: Path) -> str:
    return render(source.read_text("utf-8"), _project_name(source), _project_name(output))


def drift(source: Path, output: Path) -> str:
    """A unified diff from the checked-in ``output`` to what ``source`` generates ('' if none)."""
    expected = generate(source, output)
    actual = output.read_text("utf-8") if output.exists() else ""
    name = _project_name(output)
    lines = difflib.unified_diff(
        actual.splitlines(keepends=True),
        expected.splitlines(keepends=True),
        f"{name} (checked in)",
        f"{name} (generated from {_project_name(source)})",
    )
    return "".join(lines)


def unlisted_generated(root: Path, pairs: dict[str, str]) -> list[str]:
    """Files under ``root`` whose header says they are generated but that PAIRS does not list
    with that source: ``make generate`` would never refresh them."""
    wrong = []
    for path in sorted(root.rglob("*.py")):
        with path.open(encoding="utf-8", errors="replace") as f:
            head = f.readline() + f.readline()
        found = HEADER_RE.match(head)
        if found and pairs.get(found[1]) != _project_name(path):
            wrong.append(f"{_project_name(path)} (header names {found[1]})")
    return wrong


def _jobs(opt: argparse.Namespace, parser: argparse.ArgumentParser) -> list[tuple[Path, Path]]:
    if opt.output is not None:
        if len(opt.sources) != 1:
            parser.error("--output takes exactly one SOURCE")
        return [(opt.sources[0], opt.output)]
    if not opt.sources:
        return [(PROJECT_DIR / s, PROJECT_DIR / o) for s, o in PAIRS.items()]
    jobs = []
    for source in opt.sources:
        output = PAIRS.get(_project_name(source))
        if output is None:
            parser.error(f"{source} is not in PAIRS: give --output")
        jobs.append((source, PROJECT_DIR / output))
    return jobs


def _check(jobs: list[tuple[Path, Path]]) -> int:
    status = 0
    for source, output in jobs:
        diff = drift(source, output)
        if diff:
            print(diff, end="")
            print(f"{_project_name(output)} is not current: run `make generate`", file=sys.stderr)
            status = 1
    for name in unlisted_generated(PROJECT_DIR / "poolguard", PAIRS):
        print(f"{name}: generated but not in PAIRS of {SCRIPT}", file=sys.stderr)
        status = 1
    if not jobs:
        print(f"{SCRIPT}: no generated modules listed in PAIRS", file=sys.stderr)
    return status


def _write(jobs: list[tuple[Path, Path]]) -> int:
    for source, output in jobs:
        code = generate(source, output)
        if str(output) == "-":
            sys.stdout.write(code)
        elif not output.exists() or output.read_text("utf-8") != code:
            output.write_text(code, "utf-8")
            print(f"wrote {_project_name(output)}", file=sys.stderr)
    return 0


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(
        description="Generate the sync twin of an asyncio module (see the module docstring).",
        epilog="Without SOURCE: every pair in PAIRS.",
    )
    parser.add_argument("sources", metavar="SOURCE", nargs="*", type=Path, help="async module")
    parser.add_argument(
        "-o", "--output", type=Path, help="where to write (one SOURCE; '-' = stdout)"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 with a diff if an output is not what would be generated",
    )
    return parser.parse_args(argv), parser


def main(argv: Sequence[str] | None = None) -> int:
    opt, parser = parse_args(argv)
    jobs = _jobs(opt, parser)
    try:
        return _check(jobs) if opt.check else _write(jobs)
    except (ConversionError, cst.ParserSyntaxError) as exc:
        print(f"{SCRIPT}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
