"""Knowledge-graph embeddings: triples input, scoring models, the CPU training kernel with chunked
shared negatives, and filtered link-prediction evaluation. Pure compute (no Prefect, no Ray)."""
