"""embedlake: graphs and text corpora -> embeddings -> compressed tables -> a Parquet lake."""
__version__ = "0.1.0"

from embedlake.reader import load_matrix, read_embeddings  # noqa: E402,F401
