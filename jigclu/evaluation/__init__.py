"""How good a backbone's features are, without training a classifier on the run: the kNN monitor and its
collapse rule (:mod:`~jigclu.evaluation.knn`), the linear probe (:mod:`~jigclu.evaluation.probe`), and the
test scoring of a sweep's winner and of ``jigclu knn``, in memory or streamed (:mod:`~jigclu.evaluation.scoring`).
"""
