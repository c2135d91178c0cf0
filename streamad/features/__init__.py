"""Frames to features: preprocessing, the backbone registry, the feature extractor, temporal (motion) features."""
