"""Choices of the training layer that experiment configs offer, torch-free (a config is checked before torch
loads): the transfer-learning variants of ``train/transfer.py``; and the rule that says which weights a
variant's headline ``test_*`` numbers are of, which the reports state (report modules load no torch)."""
from __future__ import annotations

VARIANTS = ("head", "full_adam", "full_sgd", "partial", "scratch")

# Which weights a trained variant's test_* are of (results, summaries, model.json, reports).
METRICS_RULE = ("test_* are the saved weights' (the epoch with the best validation accuracy, the last epoch "
                "without a validation split); test_*_last are the last epoch's")
