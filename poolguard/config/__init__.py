"""Configuration: Settings from keyword arguments over environment variables."""

