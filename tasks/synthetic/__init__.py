"""Synthetic input: a generator of large graphs with community structure."""
