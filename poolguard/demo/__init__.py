"""``poolguard demo``: the same workload through vanilla SQLAlchemy/redis-py and poolguard,
side by side, on embedded servers while a fault happens; a scoreboard computed from what the
callers saw.

Modules: ``scenarios.py`` (the faults), ``workload.py`` (the bank and Redis counters, the
worker threads), ``runner.py`` (one scenario, both sides, the checks after), ``scoreboard.py``
(numbers and verdicts), ``render.py`` (text), ``cli.py`` (the subcommand's options).
"""
