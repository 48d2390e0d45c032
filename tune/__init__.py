"""Sweeps over JigClu's knobs with Ray Tune + Optuna, and their reports. Builds on ``jigclu``."""
