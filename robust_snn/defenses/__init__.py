"""Defenses: preprocessors, detectors, adversarial training and randomized smoothing."""
