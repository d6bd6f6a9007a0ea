"""GLIP: Grounded Language-Image Pre-training in pure PyTorch."""
