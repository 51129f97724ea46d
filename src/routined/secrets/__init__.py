"""Secrets: values encrypted at rest, and kept out of everything a run records."""
