"""Text labs: Hugging Face models (``hf``) and fine-tuning strategies (``strategies``).

Both import ``transformers``/``peft`` only inside functions, so importing this package stays cheap.
"""
