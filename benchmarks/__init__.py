"""Benchmarks and experiment scripts for purify; results, with the commands that made them, go to ``benchmarks/results``."""
