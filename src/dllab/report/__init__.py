"""Plots (plots.py) and the Markdown + self-contained HTML report (render.py)."""
