"""Writing the index: what each stage does to a file, chunking, descriptions, the Milvus store, blob gc."""
