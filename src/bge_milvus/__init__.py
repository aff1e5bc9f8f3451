"""bge_milvus."""
