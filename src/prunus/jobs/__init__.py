"""The end-to-end jobs the CLI starts: a pruning run and a quantization run, each into a run directory."""
