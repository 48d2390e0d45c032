"""What the benchmark groups and the tests share: timing and RESULTS.md (``common``), a cluster in a box
(``cluster_box``), the global-montage comparison (``montage_check``)."""
