"""Anomaly-scoring methods behind one protocol (:mod:`streamad.scorers.base`) and their registry (:mod:`streamad.scorers.registry.registry`)."""
