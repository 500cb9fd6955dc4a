"""The one training loop (loop.py) for images (image.py) and text (text/strategies.py), its precision plugin,
checkpoints and gradient probes; the variants experiments train (variants.py, transfer.py, reuse.py)."""
