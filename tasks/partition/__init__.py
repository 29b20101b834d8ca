"""Partition: CSR, METIS in a child process, partition statistics, node-data layout."""
