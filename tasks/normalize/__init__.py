"""Normalize: node features (and structural encodings for featureless graphs)."""
