"""Train: the GNN model, Cluster-GCN batches, the training loop."""
