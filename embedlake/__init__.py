"""embedlake: graphs and text corpora -> embeddings -> compressed tables -> a Parquet lake."""
__version__ = "0.1.0"


def __getattr__(name: str):
    """`embedlake.read_embeddings` / `embedlake.load_matrix`, imported on first use: the reader
    pulls in polars, pyarrow and fsspec (about 80 MB of RSS), and every Ray worker imports this
    package before any stage module, so importing it here would put them in every worker."""
    if name in ("load_matrix", "read_embeddings"):
        from embedlake import reader
        return getattr(reader, name)
    raise AttributeError(f"module 'embedlake' has no attribute {name!r}")
