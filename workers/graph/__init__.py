"""Graphs: edge-list ingest into a CSR, the lake's graph store, generated graphs, random walks,
and the Ray-side bodies of the ingest / walk / publish stages."""
