"""The fault matrix: ``python -m benchmarks.faults.fault_matrix`` (``make faults``). ``fault_kit`` runs and
judges a row; ``faults_preempt``, ``faults_ray`` and ``faults_elastic`` hold rows (``tests/test_faults.py``
runs the cheap ones)."""
