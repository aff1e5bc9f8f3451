"""bge_haystack."""
