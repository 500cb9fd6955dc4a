"""Lab 2, text (Rotten Tomatoes): what a pretrained transformer knows about sentiment (``lab2.features``) and how
to adapt it (``lab2.finetune``). ``config`` declares the experiments (torch-free), ``run`` wires the layers below
together."""
