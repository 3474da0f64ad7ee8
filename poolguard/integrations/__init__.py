"""Integrations: wire the core and backend knowledge into the libraries users hold."""
