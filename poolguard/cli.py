"""The ``poolguard`` command line: ``poolguard check`` validates configuration and backends.

Exit codes: 0 every backend answered, 1 a backend failed or nothing is configured, 2 the
configuration is invalid. Local throw-away servers are started only with ``--local``: a
deploy-time check that found no URL must fail, not report on servers the app will never use.
Nothing printed ever contains a password: URLs go through ``redact`` and every string of the
report is scrubbed of the configured passwords as a second line of defense.

The work is in ``check/``: ``runner.py`` (what to check, time bounds), one probe module per
backend, ``render.py`` (the table).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence

import poolguard
from poolguard.check.render import render_text
from poolguard.check.runner import Target, local_targets, run_targets, targets_from_env
from poolguard.config.parse import parse_duration
from poolguard.errors import ConfigError

__all__ = ["main"]

EXIT_OK, EXIT_BACKEND_FAILED, EXIT_BAD_CONFIG = 0, 1, 2
DEFAULT_OP_TIMEOUT = "5s"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="poolguard", description="Resilient connection pools: configuration and checks."
    )
    parser.add_argument("--version", action="version", version=f"poolguard {poolguard.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser(
        "check",
        help="validate the configuration and connect to every configured backend",
        description="Reads DATABASE_URL, REDIS_URL and POOLGUARD_* like the app does, connects "
        "to each backend and reports version, latency, timeouts and warnings. Exit codes: "
        "0 ok, 1 a backend failed or nothing is configured, 2 invalid configuration.",
    )
    check.add_argument("--json", action="store_true", help="print JSON for machines")
    check.add_argument(
        "--local",
        action="store_true",
        help="start local PostgreSQL, MariaDB and Redis (poolguard.testing) and check those "
        "instead of the configured URLs",
    )
    check.add_argument(
        "--name",
        action="append",
        default=[],
        metavar="NAME",
        help="also check the named database NAME (<NAME>_DATABASE_URL / <NAME>_REDIS_URL)",
    )
    check.add_argument(
        "--timeout",
        default=DEFAULT_OP_TIMEOUT,
        help=f"bound on the checks after connecting, per backend (default {DEFAULT_OP_TIMEOUT})",
    )
    from poolguard.demo.cli import add_parser as add_demo_parser

    add_demo_parser(commands)
    return parser


def _emit(result: dict[str, object], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2, sort_keys=False))
    else:
        sys.stdout.write(render_text(result))


def _config_error(exc: ConfigError, as_json: bool) -> int:
    if as_json:
        error = {"message": str(exc), "variable": exc.variable}
        _emit({"ok": False, "exit_code": EXIT_BAD_CONFIG, "error": error, "backends": []}, True)
    print(f"poolguard: configuration error: {exc}", file=sys.stderr)
    return EXIT_BAD_CONFIG


def _finish(
    targets: Sequence[Target], op_timeout: float, mode: str, notes: list[str]
) -> dict[str, object]:
    reports = run_targets(targets, op_timeout)
    secrets = [s for t in targets for s in t.secrets]
    backends = [r.to_dict(secrets) for r in reports]
    failed = any(not r.ok for r in reports) or not reports
    if not reports:
        notes.append("nothing to check")
    code = EXIT_BACKEND_FAILED if failed else EXIT_OK
    return {"ok": not failed, "exit_code": code, "mode": mode, "notes": notes, "backends": backends}


def check(
    environ: Mapping[str, str], *, local: bool, names: Sequence[str], timeout: str
) -> dict[str, object]:
    """Run ``poolguard check``; ConfigError for invalid configuration."""
    op_timeout = parse_duration("--timeout", timeout)
    if op_timeout <= 0:
        raise ConfigError("--timeout must be more than 0s", variable="--timeout")
    if local:
        with local_targets(environ) as started:
            return _finish(started, op_timeout, "local", [])
    targets = targets_from_env(environ, names)
    if not targets:
        return _nothing_configured()
    return _finish(targets, op_timeout, "env", [])


NOTHING_CONFIGURED = (
    "nothing is configured: neither DATABASE_URL nor REDIS_URL is set (set them as the app"
    " sees them, or run `poolguard check --local` to try throw-away local servers)"
)


def _nothing_configured() -> dict[str, object]:
    return {
        "ok": False,
        "exit_code": EXIT_BACKEND_FAILED,
        "mode": "env",
        "notes": [NOTHING_CONFIGURED],
        "backends": [],
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``poolguard`` console script."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from poolguard.demo.cli import run as run_demo

        return run_demo(args)
    try:
        result = check(os.environ, local=args.local, names=args.name, timeout=args.timeout)
    except ConfigError as exc:
        return _config_error(exc, args.json)
    _emit(result, args.json)
    if not result["backends"] and not result["ok"]:
        print(f"poolguard: {NOTHING_CONFIGURED}", file=sys.stderr)
    code = result["exit_code"]
    assert isinstance(code, int)
    return code
