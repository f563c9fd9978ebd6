"""Evaluation: feature statistics, Frechet distance, sampling with truncation, image grids."""
