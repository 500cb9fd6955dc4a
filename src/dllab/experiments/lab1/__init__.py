"""Lab 1, vision: MLPs on MNIST, depth with and without residual blocks, plain vs residual CNNs on CIFAR-10
(spec Ex. 1.1-1.3). ``config`` declares the experiments (torch-free), ``run`` wires the layers below together."""
