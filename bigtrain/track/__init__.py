"""Experiment tracking (MLflow), active on rank 0 only."""

from .mlflow_tracker import NullTracker, Tracker, make_tracker, open_experiment

__all__ = ["NullTracker", "Tracker", "make_tracker", "open_experiment"]
