"""jigclu's benchmarks and checks: run from the repository root as ``python -m benchmarks.<group>.<module>``.

Not part of the installed package (``pip install`` ships ``jigclu`` and ``tune`` only); ``jigclu``
never imports it. Every import between these modules is absolute (``from benchmarks.harness import
common``), none edits ``sys.path``: the repository root is on the path because ``python -m`` puts the
current directory there, and pytest adds it (``pythonpath`` in pyproject.toml).

- ``harness/``: what the groups and the tests share. ``common`` (interleaved timing, machine info,
  sections of ``benchmarks/RESULTS.md``), ``cluster_box`` (a moto S3 endpoint, a TCP proxy and a
  multi-node Ray on 127.0.0.1), ``montage_check`` (the "2 processes = 1" global-montage comparison).
- ``speed/``: ``make bench`` (``run_all``: step cost, data pipeline, Ray overhead, montage scope, sweep
  efficiency, step profile) and ``make bench-stream`` (``stream_memory``).
- ``quality/``: ``make bench-quality`` (``quality``: ablation, JigClu vs SimCLR at equal time, probe
  table) and ``make bench-sweeps`` (``asha_vs_full``: full sweep vs early stopping).
- ``faults/``: ``make faults`` (``fault_matrix``: faults injected from outside a real ``jigclu`` run;
  ``fault_kit`` runs and judges a row, the ``faults_*`` modules hold the rows).
- ``gpu_check``: ``make gpu-check``, the prepared check for a machine with CUDA.

Each module writes its own ``## Section`` of ``benchmarks/RESULTS.md``; ``quality_curve.png`` and
``profile_step.txt`` sit next to it.
"""
