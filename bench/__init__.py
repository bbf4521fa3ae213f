"""Benchmarks: each module writes JSON + a PNG plot under bench/results/."""
