"""Scoring: inference with the flip test (:mod:`.inference`), post-processing, the official
metrics (:mod:`.metrics`) and the one skeleton drawer (:mod:`.visualize`)."""
