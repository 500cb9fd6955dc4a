"""Datasets: images as in-memory uint8 tensors (images.py); text splits and tokenisation (text.py)."""
