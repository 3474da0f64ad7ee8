"""What live reconfiguration (issue 11 part 3) costs the hot paths: before/after, same run.

1. core, old vs new code in one process: ``core/retry.py`` as it was before reconfiguration
   (``git show <rev>:poolguard/core/retry.py``, loaded as a second module) against the current
   one, for the statement fast path (``first_attempt`` + ``record_success``) and the loop path
   (``run_with``: builds an :class:`Attempts`, which now captures the policy);
2. engine: checkout + ``SELECT 1`` + close on an engine never reconfigured vs one reconfigured
   (its pooled sessions already replaced), in alternating rounds: the steady state after a
   reconfiguration must cost what it cost before.

CPU µs/op of this thread (stable on a shared machine), median of alternating rounds, as ratios.

    python benchmarks/bench_reconfigure.py [--before REV] [--ops N] [--rounds R] [--no-engine]

Uses ``DATABASE_URL`` when set, else starts a throwaway ``poolguard.testing.PostgresServer``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _common import alternate_sync

from poolguard.config.settings import Settings
from poolguard.core import Classification, Disposition
from poolguard.core import retry as new_retry


def _classify(exc: BaseException) -> Classification:
    return Classification(Disposition.FAIL, "bench")


def _old_retry(rev: str) -> Any:
    source = subprocess.run(
        ["git", "show", f"{rev}:poolguard/core/retry.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "retry_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("poolguard.core._retry_before", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _cpu(samples: list[tuple[float, float]]) -> float:
    return statistics.median(cpu for _wall, cpu in samples)


def core(rev: str, ops: int, rounds: int) -> None:
    old = _old_retry(rev)
    guards = {
        name: module.Guard.from_settings(
            Settings(), name="bench", backend="sql", classify=_classify
        )
        for name, module in (("before", old), ("after", new_retry))
    }

    def fast(g: Any) -> Any:
        def op() -> None:
            if g.first_attempt() is not None:
                g.breaker.record_success()

        return op

    def loop(g: Any) -> Any:
        return lambda: g.run_with(lambda _attempts: 1)

    for label, make in (("first_attempt+record_success", fast), ("run_with (Attempts)", loop)):
        variants = {name: make(g) for name, g in guards.items()}
        samples = alternate_sync(variants, ops, rounds)
        before, after = _cpu(samples["before"]), _cpu(samples["after"])
        print(
            f"core {label:30s} before {before:.3f} us  after {after:.3f} us"
            f"  ratio {after / before:.3f}"
        )


def engine(url: str, ops: int, rounds: int) -> None:
    from sqlalchemy import text

    import poolguard

    select = text("SELECT 1")
    plain = poolguard.create_engine(url, pool_size=2, query_timeout=5)
    changed = poolguard.create_engine(url, pool_size=2, query_timeout=5)
    for engine in (plain, changed):  # both pools warm
        with engine.connect() as conn:
            conn.execute(select)
    poolguard.reconfigure(changed, query_timeout=4, retry_attempts=4)

    def op(engine: Any) -> Any:
        def run() -> None:
            with engine.connect() as conn:
                conn.execute(select)

        return run

    run = op(changed)
    run()  # its pooled session (opened under the old query_timeout) is replaced here
    samples = alternate_sync({"never": op(plain), "reconfigured": run}, ops, rounds)
    before, after = _cpu(samples["never"]), _cpu(samples["reconfigured"])
    print(
        f"engine checkout+SELECT 1+close   never {before:.1f} us  reconfigured {after:.1f} us"
        f"  ratio {after / before:.3f}"
    )
    plain.dispose()
    changed.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="0275a74", help="revision before reconfiguration")
    parser.add_argument("--ops", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--engine-ops", type=int, default=500)
    parser.add_argument("--no-engine", action="store_true")
    args = parser.parse_args()
    core(args.before, args.ops, args.rounds)
    if args.no_engine:
        return
    with ExitStack() as stack:
        url = os.environ.get("DATABASE_URL")
        if not url:
            from poolguard.testing import PostgresServer

            url = stack.enter_context(PostgresServer()).url
        engine(url, args.engine_ops, args.rounds)


if __name__ == "__main__":
    main()
