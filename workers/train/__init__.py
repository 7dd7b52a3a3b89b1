"""Skip-gram training: the numba kernel, block-partitioned and compositional variants, the torch
engine, and the Ray-side training stage bodies."""
