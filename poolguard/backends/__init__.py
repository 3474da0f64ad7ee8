"""Backend knowledge: error classification, pings, timeouts, idempotency tables.

One module per server: ``postgres.py`` and ``mysql.py`` (both read SQL text through
``sql.py``), ``redis.py``. Tables and small functions, no pooling and no retry loop: they turn a
driver's error into a ``core/disposition.py`` :class:`Classification`, and ``integrations/``
wires them into the libraries users hold.
"""
