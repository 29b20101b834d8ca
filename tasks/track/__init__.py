"""Track: MLflow runs, plots, the registered model, tracking-server checks."""
