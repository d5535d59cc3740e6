"""Dataset tooling: import with class mapping, checks, merging, pseudo-labels, synthesis, packing."""
