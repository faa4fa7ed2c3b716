"""Benchmarks (`make bench`): every figure is measured next to a baseline in the same run."""
