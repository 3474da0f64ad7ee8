"""tools/async_to_sync.py: async snippets in, the sync module out (no server; ruff runs as a
subprocess for the formatting tests)."""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

TOOL = Path(__file__).resolve().parents[3] / "tools" / "async_to_sync.py"


def _load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("async_to_sync", TOOL)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


a2s = _load_tool()


def sync(source: str) -> str:
    return a2s.to_sync(textwrap.dedent(source))


def expect(source: str, expected: str) -> None:
    assert sync(source) == textwrap.dedent(expected)


# -- async constructs ---------------------------------------------------------------------------
def test_async_def_await_with_for_and_comprehensions() -> None:
    expect(
        """\
        async def f(pool):
            async with pool.lock:
                rows = await pool.fetch()
            async for row in pool.stream():
                await row.done()
            return [r async for r in pool.stream()], (await pool.one()).value
        """,
        """\
        def f(pool):
            with pool.lock:
                rows = pool.fetch()
            for row in pool.stream():
                row.done()
            return [r for r in pool.stream()], pool.one().value
        """,
    )


def test_nested_awaits_lose_their_parentheses() -> None:
    expect(
        "marker = await (await conn.execute(SQL)).fetchone() if resolve else None\n",
        "marker = conn.execute(SQL).fetchone() if resolve else None\n",
    )


# -- names --------------------------------------------------------------------------------------
def test_names_renamed_in_code_strings_and_comments() -> None:
    expect(
        '''\
        __all__ = ["AsyncGuardedRedis"]


        class AsyncGuardedRedis(redis.asyncio.Redis):
            """A ``redis.asyncio.Redis`` retried by ``await guard.arun_with(...)``."""

            async def __aenter__(self) -> AsyncGuardedRedis:
                # AsyncGuardedRedis, not AsyncGuardedRedisX
                return await self.guard_active.arun_with(f"{x} AsyncGuardedPipeline")
        ''',
        '''\
        __all__ = ["GuardedRedis"]


        class GuardedRedis(redis.Redis):
            """A ``redis.Redis`` retried by ``guard.run_with(...)``."""

            def __enter__(self) -> GuardedRedis:
                # GuardedRedis, not AsyncGuardedRedisX
                return self.guard_active.run_with(f"{x} GuardedPipeline")
        ''',
    )


def test_dotted_names_in_imports_and_attributes() -> None:
    expect(
        """\
        import asyncio
        import redis.asyncio.client
        from redis.asyncio import Redis

        async def nap() -> None:
            await asyncio.sleep(redis.asyncio.client.DELAY)
            asyncio.get_running_loop()  # not in the table: left alone
        """,
        """\
        import asyncio
        import redis.client
        from redis import Redis
        import time

        def nap() -> None:
            time.sleep(redis.client.DELAY)
            asyncio.get_running_loop()  # not in the table: left alone
        """,
    )


def test_a_module_the_renamed_code_needs_is_imported() -> None:
    assert sync("import asyncio\nLOCK = asyncio.Lock()\n") == (
        "import asyncio\nimport threading\n\nLOCK = threading.Lock()\n"
    )


def test_prose_keeps_await_outside_literals() -> None:
    assert a2s.rename_words("callers await ``await fn(conn)``") == "callers await ``fn(conn)``"
    assert a2s.rename_words("``async with pool:``") == "``with pool:``"
    assert a2s.rename_words("``async_from_url``") == "``from_url``"
    assert a2s.rename_words("foo.redis.asyncio stays") == "foo.redis.asyncio stays"


# -- typing -------------------------------------------------------------------------------------
def test_awaitable_coroutine_and_async_generator_types() -> None:
    expect(
        """\
        Fetch = Callable[[psycopg.AsyncCursor[Any]], Awaitable[T]]
        Job = Callable[[], typing.Coroutine[Any, Any, None]]
        Rows = AsyncGenerator[Row, None]
        Items = AsyncIterator[int]
        """,
        """\
        Fetch = Callable[[psycopg.Cursor[Any]], T]
        Job = Callable[[], None]
        Rows = Generator[Row, None, None]
        Items = Iterator[int]
        """,
    )


# -- if True/False:  # ASYNC --------------------------------------------------------------------
def test_async_block_keeps_the_else_branch_dedented() -> None:
    expect(
        """\
        async def open(self) -> None:
            # before
            if True:  # ASYNC
                # Make sure the lock is created after there is an event loop
                self._ensure_lock()
            else:
                # sync side
                self._lock.acquire()  # why
            async with self._lock:
                self._open()
        """,
        """\
        def open(self) -> None:
            # before
            # sync side
            self._lock.acquire()  # why
            with self._lock:
                self._open()
        """,
    )


def test_async_block_without_else_disappears() -> None:
    expect(
        """\
        x = 1

        if True:  # ASYNC
            import asyncio

        y = 2
        """,
        """\
        x = 1

        y = 2
        """,
    )


def test_if_false_async_keeps_its_body() -> None:
    expect(
        """\
        class Pool:
            if False:  # ASYNC

                def __del__(self) -> None:
                    self.close()

            else:
                pass  # asyncio only
        """,
        """\
        class Pool:

            def __del__(self) -> None:
                self.close()
        """,
    )


def test_one_line_else_becomes_a_statement() -> None:
    expect(
        """\
        if True:  # ASYNC
            import asyncio
        else: import threading  # sync
        """,
        "import threading  # sync\n",
    )


def test_block_left_empty_gets_pass() -> None:
    expect(
        """\
        async def f():
            if True:  # ASYNC
                await g()
        """,
        """\
        def f():
            pass
        """,
    )


def test_unmarked_if_true_is_left_alone() -> None:
    source = "if True:  # always\n    x = 1\nelse:\n    x = 2\n"
    assert sync(source) == source


def test_elif_after_async_block_becomes_if() -> None:
    expect(
        """\
        def f(conn):
            if True:  # ASYNC
                conn.socket_timeout = t
            elif conn._sock is not None:
                conn._sock.settimeout(t)
            else:
                pass
        """,
        """\
        def f(conn):
            if conn._sock is not None:
                conn._sock.settimeout(t)
            else:
                pass
        """,
    )


def test_async_marker_may_carry_a_noqa() -> None:
    source = "if True:  # ASYNC  # noqa: SIM108\n    lost = a\nelse:\n    lost = b\n"
    assert sync(source) == "lost = b\n"


def test_async_marker_on_a_non_constant_test_is_refused() -> None:
    with pytest.raises(a2s.ConversionError):
        a2s.to_sync("if x:  # ASYNC\n    pass\n")


# -- comments -----------------------------------------------------------------------------------
def test_comments_and_type_ignores_stay_on_their_lines() -> None:
    expect(
        """\
        # mypy: disable-error-code="no-untyped-call"
        async def reset(self) -> None:  # type: ignore[override]
            return await self.pool.guard_active.arun_with(  # type: ignore[attr-defined]
                lambda a: self._attempt(a),
                # a comment between arguments
                NOT_SENT,
            )
        """,
        """\
        # mypy: disable-error-code="no-untyped-call"
        def reset(self) -> None:  # type: ignore[override]
            return self.pool.guard_active.run_with(  # type: ignore[attr-defined]
                lambda a: self._attempt(a),
                # a comment between arguments
                NOT_SENT,
            )
        """,
    )


# -- the whole module: header, imports, ruff format ---------------------------------------------
SOURCE = '''\
"""The async side."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from poolguard.errors import PoolguardError


async def wait(fn: Callable[[], Awaitable[None]], pause: float) -> None:
    try:
        await fn()
    except PoolguardError:
        await asyncio.sleep(pause)
'''

GENERATED = '''\
# WARNING: generated from pkg/thing_async.py
# by tools/async_to_sync.py — edit the async source and run `make generate`.
"""The async side."""

from __future__ import annotations

import time
from collections.abc import Callable

from poolguard.errors import PoolguardError


def wait(fn: Callable[[], None], pause: float) -> None:
    try:
        fn()
    except PoolguardError:
        time.sleep(pause)
'''


def test_render_adds_the_header_drops_unused_imports_and_formats() -> None:
    assert a2s.render(SOURCE, "pkg/thing_async.py", "pkg/thing.py") == GENERATED


def test_rendered_code_is_ruff_formatted() -> None:
    # A call split over lines only because of `await` is joined again; a magic trailing comma
    # keeps its layout.
    joined = "async def f(a: int) -> None:\n    await g(\n        a\n    )\n"
    assert a2s.render(joined, "s.py", "o.py").endswith("def f(a: int) -> None:\n    g(a)\n")
    kept = "async def f(\n    a: int,\n) -> None:\n    await g(a)\n"
    assert a2s.render(kept, "s.py", "o.py").endswith("def f(\n    a: int,\n) -> None:\n    g(a)\n")


# -- the command line ---------------------------------------------------------------------------
@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    source = tmp_path / "thing_async.py"
    source.write_text(SOURCE)
    return source, tmp_path / "thing.py"


def test_generate_writes_the_output(pair: tuple[Path, Path]) -> None:
    source, output = pair
    assert a2s.main([str(source), "-o", str(output)]) == 0
    text = output.read_text()
    assert text.startswith(f"# WARNING: generated from {source.as_posix()}\n")
    assert "time.sleep(pause)" in text


def test_check_passes_when_current_and_fails_with_a_diff_on_drift(
    pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    source, output = pair
    a2s.main([str(source), "-o", str(output)])
    assert a2s.main(["--check", str(source), "-o", str(output)]) == 0

    output.write_text(output.read_text().replace("time.sleep(pause)", "time.sleep(2 * pause)"))
    capsys.readouterr()
    assert a2s.main(["--check", str(source), "-o", str(output)]) == 1
    out, err = capsys.readouterr()
    assert "-        time.sleep(2 * pause)\n+        time.sleep(pause)\n" in out
    assert "is not current: run `make generate`" in err


def test_check_fails_when_the_output_is_missing(pair: tuple[Path, Path]) -> None:
    source, output = pair
    assert a2s.main(["--check", str(source), "-o", str(output)]) == 1
    assert not output.exists()


def test_a_generated_file_missing_from_pairs_is_reported(tmp_path: Path) -> None:
    (tmp_path / "listed.py").write_text(a2s.HEADER.format(source="pkg/listed_async.py"))
    (tmp_path / "stray.py").write_text(a2s.HEADER.format(source="pkg/stray_async.py") + "x = 1\n")
    (tmp_path / "plain.py").write_text("# WARNING: generated from elsewhere\n")
    pairs = {"pkg/listed_async.py": a2s._project_name(tmp_path / "listed.py")}
    stray = a2s._project_name(tmp_path / "stray.py")
    assert a2s.unlisted_generated(tmp_path, pairs) == [f"{stray} (header names pkg/stray_async.py)"]


def test_an_unknown_source_needs_an_output(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        a2s.main([str(tmp_path / "nowhere_async.py")])


def test_the_checked_in_generated_modules_are_current() -> None:
    # The same check as `make generate-check`, so `make test` catches a stale sync module too.
    assert a2s.main(["--check"]) == 0
