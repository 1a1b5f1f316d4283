"""Unlearning methods, one module each, registered by name in `base.METHODS`."""
