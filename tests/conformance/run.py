"""Conformance: SQLAlchemy's and redis-py's own test suites, run through poolguard.

    .venv/bin/python tests/conformance/run.py              # everything (what CI runs)
    .venv/bin/python tests/conformance/run.py --only redis # one suite or backend
    .venv/bin/python tests/conformance/run.py --write-expected

What it does, per run (a suite on one backend):

1. takes the test suite from the sdist of the *installed* version (``pip download``, cached in
   ``~/.cache/poolguard-conformance``; later runs need no network);
2. starts PostgreSQL, MariaDB and Redis with :mod:`poolguard.testing`;
3. runs the pinned subset with the suite's engines/clients built by poolguard
   (``sqlalchemy_plugin.py``, ``redis_plugin.py``);
4. runs the tests that did not pass again *without* poolguard: a test that fails or skips on
   plain SQLAlchemy/redis-py too is not poolguard's difference (the baseline is computed here,
   at run time, so it always matches the installed versions and servers; only the tests that
   need it are run, which halves the time);
5. compares the differences with ``expected_differences.txt`` (backend | test | reason).

Exit status: 0 when every difference is listed; 1 when a test fails with poolguard but passes
without it and is not listed (a failure that passes on an immediate rerun is reported as flaky
and does not fail); 2 when the harness itself could not run (download, servers, routing).
A listed test that passes now is reported as newly passing; ``--strict`` makes that fail too.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
EXPECTED_FILE = HERE / "expected_differences.txt"
CACHE_ENV = "CONFORMANCE_CACHE"
DEFAULT_CACHE = Path.home() / ".cache" / "poolguard-conformance"
# A whole pytest run that takes longer than this is hung (the slowest takes ~3 minutes).
RUN_TIMEOUT = 900
# Per test (pytest-timeout); redis-py's own pyproject sets 30 s for its suite.
TEST_TIMEOUT = 120
NEW_FAILURE, HARNESS_ERROR = 1, 2
KEEP_LOGS = 5  # invocations whose logs stay in the cache
UNEXPLAINED = "UNEXPLAINED"

SQLALCHEMY_SYNC = (
    # test_pool.py is mostly pools over mock DBAPIs; these classes use a real engine.
    "test/engine/test_pool.py::PoolTest",
    "test/engine/test_pool.py::PoolEventsTest",
    "test/engine/test_pool.py::CreatorCompatibilityTest",
    "test/engine/test_reconnect.py",
    "test/engine/test_execute.py",
    "test/engine/test_transaction.py",
    "test/orm/test_session.py",
    "test/orm/test_transaction.py",
)
SQLALCHEMY_ASYNC = ("test/ext/asyncio/test_engine.py", "test/ext/asyncio/test_session.py")
REDIS_FILES = ("commands", "pipeline", "pubsub", "scripting", "lock", "encoding", "monitor")
REDIS_TESTS = tuple(f"tests/test_{n}.py" for n in REDIS_FILES) + tuple(
    f"tests/test_asyncio/test_{n}.py" for n in REDIS_FILES
)
# Slow by design (sleeps of seconds, waiting out timeouts) and testing redis-py's own
# connection handling rather than what a client built by poolguard changes: deselected so the
# whole conformance run stays within minutes. Node ids as pytest prints them, class level.
REDIS_DESELECT: tuple[str, ...] = ()


@dataclass(frozen=True)
class Suite:
    name: str
    dist: str  # the installed distribution whose sdist holds the tests
    members: tuple[str, ...]  # what to extract from the sdist (never the package itself)
    plugin: str


SQLALCHEMY = Suite(
    "sqlalchemy", "SQLAlchemy", ("test/", "setup.cfg", "pyproject.toml"), "sqlalchemy_plugin"
)
REDIS = Suite("redis", "redis", ("tests/", "pyproject.toml"), "redis_plugin")


@dataclass(frozen=True)
class Run:
    suite: Suite
    backend: str  # "postgresql", "mariadb", "redis": the column of expected_differences.txt
    label: str
    tests: tuple[str, ...]
    driver: str = ""  # SQLAlchemy URL scheme of the --dburi
    deselect: tuple[str, ...] = ()


RUNS = (
    Run(SQLALCHEMY, "postgresql", "postgresql", SQLALCHEMY_SYNC, "postgresql+psycopg"),
    Run(
        SQLALCHEMY, "postgresql", "postgresql-asyncio", SQLALCHEMY_ASYNC, "postgresql+psycopg_async"
    ),
    Run(SQLALCHEMY, "mariadb", "mariadb", SQLALCHEMY_SYNC, "mariadb+pymysql"),
    Run(SQLALCHEMY, "mariadb", "mariadb-asyncio", SQLALCHEMY_ASYNC, "mariadb+aiomysql"),
    Run(REDIS, "redis", "redis", REDIS_TESTS, deselect=REDIS_DESELECT),
)
SERVER_OF = {"postgresql": "postgres", "mariadb": "mysql", "redis": "redis"}
Servers = dict[str, Any]  # kind -> started poolguard.testing server


class HarnessError(RuntimeError):
    """The conformance run could not be carried out (not a test outcome)."""


# --- the suites' sources ----------------------------------------------------------------------


def installed_version(dist: str) -> str:
    return importlib.metadata.version(dist)


def fetch_sdist(dist: str, version: str, cache: Path) -> Path:
    """The sdist of ``dist==version``, downloaded once with pip into the cache."""
    target = cache / "sdists"
    found = _find_sdist(target, dist, version)
    if found is not None:
        return found
    target.mkdir(parents=True, exist_ok=True)
    # --no-binary only for the package itself: its build dependencies (needed by pip to read
    # the sdist's metadata) come as wheels, which takes seconds instead of minutes.
    argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", dist]
    argv += ["--disable-pip-version-check", "-q", "-d", str(target), f"{dist}=={version}"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    found = _find_sdist(target, dist, version)
    if done.returncode != 0 or found is None:
        raise HarnessError(
            f"pip download of the {dist} {version} sdist failed:\n{done.stderr[-2000:]}"
        )
    return found


def _find_sdist(directory: Path, dist: str, version: str) -> Path | None:
    wanted = f"{dist.lower()}-{version}.tar.gz"
    if not directory.is_dir():
        return None
    return next((p for p in directory.iterdir() if p.name.lower() == wanted), None)


def unpack(suite: Suite, version: str, cache: Path) -> Path:
    """The suite's tests extracted from its sdist (once), next to nothing of the package."""
    sdist = fetch_sdist(suite.dist, version, cache)
    root = cache / "src" / f"{suite.name}-{version}"
    marker = root / ".extracted"
    if not marker.exists():
        _extract(sdist, root, suite.members)
        marker.touch()
    if suite is SQLALCHEMY:
        _link_installed_sqlalchemy(root)
    return root


def _extract(sdist: Path, root: Path, members: Sequence[str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist) as tar:
        chosen = []
        for info in tar.getmembers():
            inner = info.name.split("/", 1)[1] if "/" in info.name else ""
            if any(inner == m or (m.endswith("/") and inner.startswith(m)) for m in members):
                info.name = inner
                chosen.append(info)
        if hasattr(tarfile, "data_filter"):
            tar.extractall(root, members=chosen, filter="data")
        else:  # pragma: no cover - Python < 3.10.12 / 3.11.4
            tar.extractall(root, members=chosen)


def _link_installed_sqlalchemy(root: Path) -> None:
    """SQLAlchemy's test/conftest.py loads its plugin from ./lib: point that at the installed
    package (with its compiled extensions), so one SQLAlchemy is tested, the installed one."""
    spec = importlib.util.find_spec("sqlalchemy")
    if spec is None or not spec.submodule_search_locations:
        raise HarnessError("SQLAlchemy is not installed")
    link = root / "lib" / "sqlalchemy"
    link.parent.mkdir(exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(Path(next(iter(spec.submodule_search_locations))))


# --- servers ----------------------------------------------------------------------------------


@contextlib.contextmanager
def started_servers(kinds: set[str]) -> Iterator[Servers]:
    from poolguard.testing import MySQLServer, PostgresServer, RedisServer, ServerError
    from poolguard.testing.servers import ServerUnavailable

    makers = {
        # Two-phase commit tests need prepared transactions (off by default).
        "postgres": lambda: PostgresServer(config={"max_prepared_transactions": "10"}),
        "mysql": MySQLServer,
        "redis": RedisServer,
    }
    servers: Servers = {}
    try:
        try:
            for kind in sorted(kinds):
                servers[kind] = makers[kind]().start()
            _prepare_schemas(servers)
        except (ServerError, ServerUnavailable) as exc:
            raise HarnessError(f"cannot start the test servers: {exc}") from exc
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def _prepare_schemas(servers: Servers) -> None:
    """The extra schemas SQLAlchemy's suite expects (``test_schema``, ``test_schema_2``)."""
    schemas = ("test_schema", "test_schema_2")
    pg = servers.get("postgres")
    if pg is not None:
        sql = "".join(f"CREATE SCHEMA {s} AUTHORIZATION {pg.user};" for s in schemas)
        pg.psql(sql, database=pg.database)
    my = servers.get("mysql")
    if my is not None:
        from poolguard.testing.servers.mysql import APP_HOSTS

        sql = "".join(f"CREATE DATABASE {s};" for s in schemas)
        sql += "".join(
            f"GRANT ALL ON {s}.* TO '{my.user}'@'{h}';" for s in schemas for h in APP_HOSTS
        )
        my.sql(sql)


def backend_options(run: Run, servers: Servers) -> list[str]:
    server = servers[SERVER_OF[run.backend]]
    url: str = server.url
    if run.suite is REDIS:
        return ["--redis-url", url]
    return ["--dburi", run.driver + url[url.index(":") :], "--dropfirst"]


# --- running pytest ---------------------------------------------------------------------------


@dataclass
class Outcomes:
    outcomes: dict[str, str]  # raw node id -> passed / failed / skipped
    messages: dict[str, str]
    routing: dict[str, int]
    seconds: float

    def ids(self, outcome: str) -> list[str]:
        return [n for n, o in self.outcomes.items() if o == outcome]


def run_pytest(
    run: Run,
    root: Path,
    servers: Servers,
    mode: str,
    logs: Path,
    select: Sequence[str] | None = None,
    tag: str = "",
) -> Outcomes:
    """The run's subset (or only the node ids in ``select``) in ``mode`` (guarded or plain)."""
    stem = f"{run.label}-{mode}{tag}"
    out, log = logs / f"{stem}.json", logs / f"{stem}.log"
    env = dict(os.environ, CONFORMANCE_MODE=mode, CONFORMANCE_OUT=str(out))
    tests: Sequence[str] = run.tests
    if select is not None:
        listing = logs / f"{stem}.select"
        listing.write_text("\n".join(select) + "\n")
        env["CONFORMANCE_SELECT"] = str(listing)
        tests = sorted({node.split("::", 1)[0] for node in select})
    argv = [sys.executable, "-m", "pytest", *tests, *backend_options(run, servers)]
    argv += [f"--deselect={d}" for d in run.deselect]
    argv += ["-q", "-p", "no:cacheprovider", "-p", "no:poolguard", "-o", "addopts="]
    argv += ["-p", "conformance_outcomes", "-p", run.suite.plugin]
    if run.suite is SQLALCHEMY:
        argv += ["-o", f"timeout={TEST_TIMEOUT}"]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    started = time.monotonic()
    code = _call(argv, root, env, log)
    seconds = time.monotonic() - started
    if code not in (0, 1) or not out.exists():
        raise HarnessError(f"{run.label} ({mode}): pytest exited {code}; see {log}\n{_tail(log)}")
    data = json.loads(out.read_text())
    return Outcomes(data["outcomes"], data["messages"], data["routing"], seconds)


def _call(argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> int:
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            return proc.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            _kill(proc)
            raise HarnessError(f"pytest hung for {RUN_TIMEOUT} s; see {log}") from None
        except BaseException:  # Ctrl-C, or SIGTERM from a CI timeout (see main)
            _kill(proc)
            raise


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """The pytest run, with anything it started (it runs in its own session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


# --- comparing --------------------------------------------------------------------------------

# SQLAlchemy names backend-specific test classes after the server version
# (``ResetAgentTest_postgresql+psycopg_15_18``): the list must not change with a minor upgrade.
_VERSION_SUFFIX = re.compile(r"(_(?:postgresql|mysql|mariadb)\+[a-z0-9_]+?)(?:_\d+)+(?=::)")


def normalize(node_id: str) -> str:
    return _VERSION_SUFFIX.sub(r"\1", node_id)


@dataclass(frozen=True)
class Expected:
    backend: str
    test: str
    reason: str


def read_expected(path: Path = EXPECTED_FILE) -> dict[tuple[str, str], Expected]:
    entries: dict[tuple[str, str], Expected] = {}
    if not path.exists():
        return entries
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = [p.strip() for p in line.split(" | ", 2)]
        if len(parts) != 3 or not all(parts):
            raise HarnessError(f"{path.name}:{number}: expected 'backend | test id | reason'")
        entry = Expected(*parts)
        entries[(entry.backend, entry.test)] = entry
    return entries


@dataclass
class Verdict:
    """One run's comparison; test ids are normalized."""

    run: Run
    passed: int = 0
    skipped_both: int = 0  # skipped with and without poolguard
    failing_both: int = 0  # fails without poolguard too: not poolguard's
    expected: list[str] = field(default_factory=list)
    new: dict[str, str] = field(default_factory=dict)  # test -> failure message
    flaky: list[str] = field(default_factory=list)
    newly_passing: list[str] = field(default_factory=list)
    routing: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def compare(
    run: Run,
    guarded: Outcomes,
    plain: Outcomes,
    expected: dict[tuple[str, str], Expected],
) -> Verdict:
    verdict = Verdict(run, routing=guarded.routing, seconds=guarded.seconds + plain.seconds)
    for raw, outcome in guarded.outcomes.items():
        test = normalize(raw)
        listed = (run.backend, test) in expected
        if outcome == "passed":
            verdict.passed += 1
            if listed:
                verdict.newly_passing.append(test)
        elif plain.outcomes.get(raw) == "failed":
            verdict.failing_both += 1
        elif plain.outcomes.get(raw) == "skipped":
            verdict.skipped_both += 1
        elif listed:
            verdict.expected.append(test)
        else:  # passes without poolguard (or has no baseline outcome: cannot be excused)
            verdict.new[raw] = guarded.messages.get(raw, f"{outcome} with poolguard only")
    return verdict


# --- the whole run ----------------------------------------------------------------------------


def conform(
    run: Run,
    root: Path,
    servers: Servers,
    logs: Path,
    args: argparse.Namespace,
    expected: dict[tuple[str, str], Expected],
) -> Verdict:
    guarded = run_pytest(run, root, servers, "guarded", logs)
    if not guarded.routing.get("guarded"):
        raise HarnessError(f"{run.label}: nothing was built by poolguard: the routing did not take")
    candidates = None if args.full_baseline else guarded.ids("failed") + guarded.ids("skipped")
    plain = _plain(run, root, servers, logs, candidates)
    verdict = compare(run, guarded, plain, expected)
    if verdict.new:
        _rerun_new(run, root, servers, logs, verdict)
    return verdict


def _plain(
    run: Run, root: Path, servers: Servers, logs: Path, select: Sequence[str] | None
) -> Outcomes:
    if select is not None and not select:
        return Outcomes({}, {}, {}, 0.0)
    plain = run_pytest(run, root, servers, "plain", logs, select)
    if plain.routing.get("guarded"):
        raise HarnessError(f"{run.label}: the plain baseline went through poolguard")
    return plain


def _rerun_new(run: Run, root: Path, servers: Servers, logs: Path, verdict: Verdict) -> None:
    """A new failure must fail again on an immediate rerun; one that passes is only flaky."""
    again = run_pytest(run, root, servers, "guarded", logs, list(verdict.new), tag="-rerun")
    for raw in list(verdict.new):
        if again.outcomes.get(raw) == "passed":
            del verdict.new[raw]
            verdict.flaky.append(normalize(raw))
    verdict.seconds += again.seconds


def report(
    verdicts: Sequence[Verdict], expected: dict[tuple[str, str], Expected], strict: bool
) -> int:
    print("\n== conformance summary")
    print(_row(COLUMNS))
    for v in verdicts:
        print(_row(_counts(v)))
    print(
        "failed: fails with poolguard only, not listed; flaky: failed, then passed on a rerun; "
        "not-ours: fails without poolguard too;\nskipped: skipped with and without poolguard; "
        "routed: engines/clients built by poolguard"
    )
    _report_details(verdicts, expected)
    failed = any(v.new for v in verdicts) or (strict and any(v.newly_passing for v in verdicts))
    return NEW_FAILURE if failed else 0


COLUMNS = ("run", "passed", "failed", "expected-diff", "newly-passing", "flaky", "not-ours")
COLUMNS += ("skipped", "routed", "seconds")
WIDTHS = (31, 7, 7, 14, 14, 6, 9, 8, 7, 8)


def _row(cells: Sequence[object]) -> str:
    first, *rest = cells
    return f"{first!s:<{WIDTHS[0]}}" + "".join(
        f"{cell!s:>{w}}" for cell, w in zip(rest, WIDTHS[1:], strict=True)
    )


def _counts(v: Verdict) -> tuple[object, ...]:
    return (
        f"{v.run.suite.name}/{v.run.label}",
        v.passed,
        len(v.new),
        len(v.expected),
        len(v.newly_passing),
        len(v.flaky),
        v.failing_both,
        v.skipped_both,
        v.routing.get("guarded", 0),
        f"{v.seconds:.0f}",
    )


def _report_details(verdicts: Sequence[Verdict], expected: dict[tuple[str, str], Expected]) -> None:
    for v in verdicts:
        for raw, message in sorted(v.new.items()):
            gist = message.splitlines()[0] if message else ""
            print(f"NEW FAILURE [{v.run.backend}] {normalize(raw)}\n    {gist}")
        for test in sorted(v.newly_passing):
            reason = expected[(v.run.backend, test)].reason
            print(f"NEWLY PASSING [{v.run.backend}] {test} (listed: {reason})")
        for test in sorted(v.flaky):
            print(f"FLAKY (failed, then passed on rerun) [{v.run.backend}] {test}")
    ran = {(v.run.backend, t) for v in verdicts for t in (*v.expected, *v.newly_passing)}
    stale = [
        e for k, e in expected.items() if k not in ran and any(covers(v.run, e) for v in verdicts)
    ]
    for entry in sorted(stale, key=lambda e: (e.backend, e.test)):
        print(f"LISTED, NOT A DIFFERENCE TODAY [{entry.backend}] {entry.test} (not run, or fails")
        print("    without poolguard too)")


def covers(run: Run, entry: Expected) -> bool:
    """Whether ``entry`` is a test of ``run`` (same backend, one of its test files)."""
    files = {test.split("::", 1)[0] for test in run.tests}
    return entry.backend == run.backend and entry.test.split("::", 1)[0] in files


def write_expected(
    verdicts: Sequence[Verdict], expected: dict[tuple[str, str], Expected], path: Path
) -> None:
    """Rewrite the list: today's differences, keeping the reasons already written."""
    keep = [e for e in expected.values() if not any(covers(v.run, e) for v in verdicts)]
    now: list[Expected] = []
    for v in verdicts:
        for test in v.expected:
            now.append(expected[(v.run.backend, test)])
        for raw, message in v.new.items():
            first = message.splitlines()[0] if message else ""
            now.append(Expected(v.run.backend, normalize(raw), f"{UNEXPLAINED}: {first[:160]}"))
    entries = sorted([*keep, *now], key=lambda e: (e.backend, e.test))
    header = (
        [line for line in path.read_text().splitlines() if line.startswith("#")]
        if path.exists()
        else []
    )
    path.write_text(
        "\n".join([*header, *(f"{e.backend} | {e.test} | {e.reason}" for e in entries)]) + "\n"
    )
    unexplained = sum(e.reason.startswith(UNEXPLAINED) for e in entries)
    print(f"wrote {len(entries)} entries to {path} ({unexplained} still {UNEXPLAINED})")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    # A CI timeout sends SIGTERM: unwind, so the servers and the running pytest are stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started = time.monotonic()
    cache = Path(args.cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE)
    runs = [r for r in RUNS if not args.only or {r.suite.name, r.backend, r.label} & set(args.only)]
    try:
        expected = read_expected(args.expected)
        verdicts = _conform_all(runs, cache, args, expected)
    except HarnessError as exc:
        print(f"conformance harness error: {exc}", file=sys.stderr)
        return HARNESS_ERROR
    if args.write_expected:
        write_expected(verdicts, expected, args.expected)
    code = report(verdicts, expected, args.strict)
    print(f"total {time.monotonic() - started:.0f} s")
    return code


def _conform_all(
    runs: Sequence[Run],
    cache: Path,
    args: argparse.Namespace,
    expected: dict[tuple[str, str], Expected],
) -> list[Verdict]:
    versions = {s.name: installed_version(s.dist) for s in {r.suite for r in runs}}
    roots = {
        name: unpack(s, versions[name], cache)
        for name, s in ((r.suite.name, r.suite) for r in runs)
    }
    print("suites: " + ", ".join(f"{n} {v} (sdist tests)" for n, v in sorted(versions.items())))
    logs = _logs_dir(cache)
    verdicts = []
    with started_servers({SERVER_OF[r.backend] for r in runs}) as servers:
        for run in runs:
            verdict = conform(run, roots[run.suite.name], servers, logs, args, expected)
            print(
                "-- " + " ".join(f"{c}={v}" for c, v in zip(COLUMNS, _counts(verdict), strict=True))
            )
            verdicts.append(verdict)
    return verdicts


def _logs_dir(cache: Path) -> Path:
    """A directory for this invocation's logs (two runs at once must not share files); the
    newest few are kept."""
    runs = cache / "logs"
    logs = runs / time.strftime(f"%Y%m%dT%H%M%S-{os.getpid()}", time.gmtime())
    logs.mkdir(parents=True)
    for old in sorted(p for p in runs.iterdir() if p.is_dir())[:-KEEP_LOGS]:
        shutil.rmtree(old, ignore_errors=True)
    print(f"logs: {logs}")
    return logs


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        nargs="*",
        help="suites, backends or run labels: sqlalchemy, redis, postgresql, mariadb-asyncio...",
    )
    parser.add_argument(
        "--cache-dir",
        help=f"sdists, extracted suites and logs (default ${CACHE_ENV} or {DEFAULT_CACHE})",
    )
    parser.add_argument(
        "--full-baseline",
        action="store_true",
        help="run the whole subset without poolguard too (default: only what failed with it)",
    )
    parser.add_argument(
        "--write-expected",
        action="store_true",
        help=f"rewrite {EXPECTED_FILE.name} with today's differences (new ones: {UNEXPLAINED})",
    )
    parser.add_argument(
        "--expected",
        type=Path,
        default=EXPECTED_FILE,
        help="the list of expected differences (default: the checked-in one)",
    )
    parser.add_argument(
        "--strict", action="store_true", help="a listed test that passes now fails the run too"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
