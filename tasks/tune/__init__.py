"""Tune: Optuna hyper-parameter search and applying its result."""
