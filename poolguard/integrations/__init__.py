"""Integrations: wire the core and backend knowledge into the libraries users hold.

One package per library: ``sqlalchemy/`` (engines, ``run_transaction``), ``psycopg_pool/``
(native PostgreSQL pools), ``redis/`` (redis-py clients). Shared by them: ``backstop.py`` (cut a
socket whose deadline passed) and ``_giveup.py`` (which error a final SQL failure becomes).
Users reach them through ``poolguard/__init__.py``, ``poolguard/postgres.py`` and
``poolguard/redis.py``; the decisions they call are ``poolguard/core/``.
"""
