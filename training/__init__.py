"""Training, evaluation, export, quantisation and promotion of detector models (needs the train extra)."""
