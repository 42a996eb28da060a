"""gpt-novel: pretrain GPT-2 on Chinese novels and continue a novel from a prompt."""

__version__ = "0.1.0"
