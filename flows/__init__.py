"""Prefect flows: orchestration only, each readable as the list of its stages."""
