"""Benchmarks: every figure is measured beside a raw baseline in the same run (`make bench`)."""
