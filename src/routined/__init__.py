"""routined: a self-hosted server that runs coding agents on their own."""

__version__ = "0.1.0"
