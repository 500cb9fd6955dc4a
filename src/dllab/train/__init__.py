"""One training loop for every image experiment (loop.py), its checkpoints and gradient probes."""
