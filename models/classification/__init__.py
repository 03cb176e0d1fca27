"""Image classification: a backbone plus a linear head, and its predictor."""
