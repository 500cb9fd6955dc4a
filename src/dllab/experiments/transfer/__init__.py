"""Lab 1, Ex. 2.1 (``lab1.transfer``): the depth-5 CIFAR-10 CNN as a frozen feature extractor and as a starting
point. ``config`` declares the experiment (torch-free), ``run`` wires the layers below together."""
