"""Ocellus models: backbones, classifier and detector heads, Predictor, export format."""
