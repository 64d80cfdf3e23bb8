"""Benchmarks: each module is run as ``python -m benchmarks.<name>`` and writes a Markdown table to results/."""
