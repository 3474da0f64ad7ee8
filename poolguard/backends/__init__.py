"""Backend knowledge: error classification, pings, timeouts, idempotency tables."""
