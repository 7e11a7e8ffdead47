"""Measuring models: metrics, plots, evaluation on dataset splits, and perovskite site energies."""
