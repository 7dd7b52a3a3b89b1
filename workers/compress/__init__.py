"""Compressed tables: one API over every codec (codecs.py), each codec family in its own module, and
the lake layout of compressed tables (store.py)."""
