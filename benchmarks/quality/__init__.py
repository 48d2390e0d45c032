"""Quality benchmarks: ``python -m benchmarks.quality.quality`` (``make bench-quality``) and
``python -m benchmarks.quality.asha_vs_full`` (``make bench-sweeps``)."""
