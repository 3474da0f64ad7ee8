"""Metrics adapters over ``poolguard.stats()`` snapshots (optional extras).

One module per exporter: ``prometheus.py`` (:class:`PoolguardCollector`). The counters come
from ``poolguard/core/stats.py``, reached through ``poolguard.stats()`` (``poolguard/_stats.py``).
"""
