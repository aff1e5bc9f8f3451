"""bge_llamaindex."""
