"""Out-of-distribution detection.

Detectors are objects, as in pytorch-ood (see ``base``), one class per file, each registered by name
(``@register("detector", "msp")``; ``registry.get("detector", name)`` is the class): ``fit(model, x, y)``
(ID training images and labels; a no-op for the logit detectors; the autoencoder trains and keeps its decoder,
the feature-space detectors, ``mahalanobis``, ``knn``, ``vim``, ``react``, learn from the penultimate features) and
``score(model, x)``, one score per input with pytorch-ood's convention: **larger score = more likely OOD**.
The logit-based ones also take a (N, K) logit tensor, so one forward pass over a dataset serves all of them::

    logits = logits_of(model, x_test)
    scores = {name: registry.get("detector", name)().score_logits(logits) for name in ("msp", "max_logit")}

Images follow dllab's contract: float in [0, 1], (N, C, H, W); normalisation lives inside the model
(``dllab.train.inference`` runs a model over them).
"""
