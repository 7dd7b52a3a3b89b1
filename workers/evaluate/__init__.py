"""Evaluation: node classification, link prediction, geometry (reconstruction, kNN recall,
alignment), word benchmarks, the Ray-side evaluation stage bodies and the markdown report."""
