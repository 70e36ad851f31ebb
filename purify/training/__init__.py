"""Recipes that produce purify's shipped artifacts (weights under ``purify/weights``).

Each recipe is a command line (``python -m purify.training.<recipe> --help``) that writes a
``.safetensors`` file, a ``.json`` config carrying the exact command, the sha256 of the weights
and the measured accuracy, and the training log next to them.
"""
