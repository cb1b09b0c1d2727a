"""Label conventions shared by encoding, collation and log-probs."""

IGNORE_INDEX = -100
"""The label of a position that is not trained on (prompt, padding): Hugging Face's and LLaMA-Factory's value."""
