"""Text corpora: tokenising, sharded vocabularies, token-id shards and word co-occurrence graphs."""
