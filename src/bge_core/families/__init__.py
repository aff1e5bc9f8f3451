"""Model families: an input format and a head each."""
