"""``poolguard check``: probe each configured backend with its driver and report what it found.

One small module per backend (``postgres``, ``mysql``, ``redis``) with one probe function each;
``runner`` decides what to check and bounds every probe in time; ``render`` draws the table.
Each probe fills a ``report.BackendReport``; the command line around them is ``poolguard/cli.py``.
"""
