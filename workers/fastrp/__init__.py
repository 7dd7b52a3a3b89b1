"""FastRP: row-partitioned sparse propagation kernels and their Ray-side stage bodies."""
