"""Metrics adapters over ``poolguard.stats()`` snapshots (optional extras)."""
