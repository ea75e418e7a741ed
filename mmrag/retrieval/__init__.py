"""Reading the index: retrieval, answers, evaluation."""
