"""Graphlet orbit adjacencies (GRADCO's 28 matrices for 2-4 node graphlets): exact counting
(count.py), their names and identities (pairs.py), and an embedding from them (embed.py)."""
