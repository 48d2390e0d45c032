"""Jigsaw Clustering (Chen, Liu, Jia; CVPR 2021) as an elastic, searchable training platform."""
__version__ = "0.1.0"
