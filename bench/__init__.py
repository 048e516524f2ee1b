"""Benchmarks, each runnable alone: ``.venv/bin/python bench/<name>.py [--quick]``."""
