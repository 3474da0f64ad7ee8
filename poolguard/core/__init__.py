"""Policy core: pure, clock-injected decisions (no I/O)."""
