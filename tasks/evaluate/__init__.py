"""Evaluate: full-graph inference, metrics, baselines and health checks."""
