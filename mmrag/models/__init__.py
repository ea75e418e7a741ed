"""Model clients: the LLM client, the embedders, the vector cache, the tokenizer."""
