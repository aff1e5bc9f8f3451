"""Engine: tokenize → schedule → forward → head."""
