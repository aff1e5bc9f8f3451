"""Model code not in transformers (layerwise and lightweight LLM rerankers)."""
