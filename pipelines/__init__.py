"""The jobs users run, each assembled from :mod:`streamad` stages, models and stores."""
