"""Metrics (AUROC, AUPRO, sPRO), labelled test sets and the reports of an evaluation."""
