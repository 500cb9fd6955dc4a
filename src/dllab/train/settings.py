"""Choices of the training layer that experiment configs offer, torch-free (a config is checked before torch
loads): the transfer-learning variants of ``train/transfer.py``."""
from __future__ import annotations

VARIANTS = ("head", "full_adam", "full_sgd", "partial", "scratch")
