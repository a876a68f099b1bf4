"""Speculative decoding: who drafts the next tokens of a request (proposers) and how a draft is
checked against the model's own choice (verification). The scheduler wires them into its steps."""
