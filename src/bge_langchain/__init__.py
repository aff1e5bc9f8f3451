"""bge_langchain."""
