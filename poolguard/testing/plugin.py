"""pytest plugin (fixtures for real servers and the fault proxy)."""
