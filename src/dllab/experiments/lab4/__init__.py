"""Lab 4, robustness: OOD detection, FGSM/PGD attacks, FGSM adversarial training, ODIN (spec Lab 4).
``config`` declares the experiments (torch-free), ``run`` wires the layers below together."""
