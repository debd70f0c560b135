"""Benchmarks: each writes a JSON of figures (make bench-*). Never run by the unit tests."""
