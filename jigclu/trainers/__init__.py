"""One training loop per task; each is a function ``run_<task>(config, context) -> summary``."""
