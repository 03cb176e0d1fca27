"""Offline training, evaluation, export and the retraining job."""
