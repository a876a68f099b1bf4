"""Attention backends: read and write the paged KV pool for a ForwardBatch."""
