"""Post-hoc analyses of trained models: OOD detection, adversarial attacks."""
