"""Unlearning methods, one module each, declared through `registry` (the method contract)."""
