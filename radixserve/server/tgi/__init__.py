"""Hugging Face text-generation-inference's API (POST /, /generate with an `inputs` body, /generate_stream, /info)."""
