"""satsrouter: an LLM node paid in Cashu ecash."""

__version__ = "0.1.0"
