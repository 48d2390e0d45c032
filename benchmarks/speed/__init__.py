"""Speed benchmarks: ``python -m benchmarks.speed.run_all`` (``make bench``) runs all but ``stream_memory``
(``make bench-stream``)."""
