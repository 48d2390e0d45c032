"""The sweep directory on disk: every file a sweep keeps, on any storage (the sweep's counterpart
of :class:`jigclu.runs.RunLayout`; only ``tune/`` uses it). Light on purpose: no torch, no Ray, so
the report can read a sweep without loading either."""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from pathlib import Path

from jigclu import storage

# The files of a sweep directory, named here only (tune/ imports them; the report reads them).
TRIAL_PREFIX = "trial-"  # trial-<id>/: one directory per trial
TEST_SCORES = "test_scores.json"  # the selected trials scored once on the test split, after the sweep
BUDGET_STOPPED = "budget_stopped.json"  # ids of the trials the time budget ended (a JSON list)
WAITING = "waiting.json"  # {trial id: what it waits for}, rewritten when the set changes
# in a trial's directory
RESULTS = "result.json"  # Tune's: one JSON line per report
SAMPLED = "sampled.json"  # the sampled parameters (Tune's params.json may be missing)
FAILED = "failed.txt"
"""Why the trial failed for a reason of its own (a bad combination, a NaN, a Ray Train run out of
retries), so a retry by Tune fails at once instead of training again."""
TRAIN_RUNS = "train_runs.json"
"""A Ray Train trial's ``[{"run", "from", "config"}, ...]``, its Train runs, oldest first: the current
one last; ``from`` is the pointer a run after a PBT exploit started from (None for the first),
``config`` a digest of the trial config it trained with."""
POINTER = "train_checkpoint.json"
"""In a Ray Train trial's Tune checkpoint: where its Train checkpoint is (``{"run", "checkpoint", "epoch"}``)."""


class SweepLayout:
    """The files of one sweep, rooted at ``root`` (a path or a storage URI)::

        sweep.yaml           the resolved sweep definition
        optuna.db            the Optuna study (SQLite; a copy when the sweep lives in object storage)
        experiment_state-*   Ray Tune's own state (written by Tune)
        trial-<id>/          one per trial: result.json, config.yaml, sampled.json, checkpoints
        train/<name>/        the Ray Train runs of trials that run on Ray Train workers
        test_scores.json, budget_stopped.json, waiting.json   (the names above)

    SQLite cannot live in an object store, so for a remote sweep the study is kept on the
    driver's disk (``study_cache``) and published to ``optuna.db`` after every trial and at the
    end; a sweep resumed on a fresh head node fetches it back first.
    """

    def __init__(self, root: str) -> None:
        self.root = storage.normalise(root)

    @classmethod
    def of(cls, base: str, name: str) -> "SweepLayout":
        return cls(storage.join(base, name))

    def file(self, *parts: str) -> str:
        return storage.join(self.root, *parts)

    @property
    def definition(self) -> str:
        return self.file("sweep.yaml")

    @property
    def study(self) -> str:
        return self.file("optuna.db")

    @property
    def train_root(self) -> str:
        return self.file("train")

    def trial(self, trial_id: str) -> str:
        return self.file(f"{TRIAL_PREFIX}{trial_id}")

    @property
    def is_local(self) -> bool:
        return storage.is_local(self.root)

    @property
    def study_cache(self):  # -> Path
        """Where the driver keeps the SQLite study: in the sweep itself when it is local."""
        local = storage.local_path(self.root)
        if local is not None:
            return local / "optuna.db"
        # The path must be the same on every head node of the cluster: Tune's saved searcher state
        # holds the study's SQLite URL, and a resumed sweep's searcher opens that same file.
        key = hashlib.sha1(self.root.split("?", 1)[0].encode()).hexdigest()[:12]
        name = self.root.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        return Path.home() / ".cache" / "jigclu" / "studies" / f"{name}-{key}" / "optuna.db"

    def forget_study(self) -> None:
        """Drop a cached copy of a remote sweep's study (a new sweep must not inherit an old one)."""
        if not self.is_local:
            self.study_cache.unlink(missing_ok=True)

    def fetch_study(self) -> None:
        """A remote sweep's study onto this disk, unless the copy here is already as new."""
        if self.is_local or not storage.is_file(self.study):
            return
        cache = self.study_cache
        remote_time = storage.mtime(self.study) or 0.0
        if not cache.exists() or cache.stat().st_mtime < remote_time:
            storage.download(self.study, cache)

    def publish_study(self) -> None:
        """Upload a consistent snapshot of the study (SQLite's backup API) to the sweep's storage."""
        cache = self.study_cache
        if self.is_local or not cache.exists():
            return
        import sqlite3

        with tempfile.TemporaryDirectory(prefix="jigclu-study-") as tmp:
            snapshot = Path(tmp) / "optuna.db"
            with sqlite3.connect(cache) as src, sqlite3.connect(snapshot) as dst:
                src.backup(dst)
            storage.write_atomic(self.study, snapshot.read_bytes())

    def exists(self) -> bool:
        return storage.is_file(self.definition)

    def set_aside_torn_state(self) -> list[str]:
        """Rename Tune state files that a killed driver left empty or half-written.

        Tune writes its experiment and searcher state in place on a local disk; a driver killed
        mid-write leaves a truncated newest file, and restoring from it fails (Tune then silently
        starts the sweep over). Setting it aside (``*.torn``, nothing deleted) lets the restore
        use the previous one. (On object stores uploads are whole, but the check is the same.)
        """
        import pickletools

        torn = []
        for name in storage.list_dir(self.root):
            if not _TUNE_STATE.match(name):
                continue
            try:
                data = storage.read_bytes(self.file(name))
                if name.startswith("experiment_state-"):
                    json.loads(data)
                else:  # a pickle, whatever its name says (search_gen_state-*.json is one too): read
                    # the opcodes only (a whole pickle ends in STOP); nothing is imported or run
                    for _opcode in pickletools.genops(data):
                        pass
            except Exception:  # empty, truncated or otherwise unreadable
                storage.move(self.file(name), self.file(name + ".torn"))
                torn.append(name)
        return torn

    def set_aside_orphans(self, known: set[str]) -> list[str]:
        """Hide trial directories Tune no longer knows (``.orphan-trial-*``): trials started after
        the last state save of a killed driver, which the resumed sweep ran again under a new id."""
        if not known:
            return []
        orphans = [n for n in storage.list_dir(self.root) if n.startswith(TRIAL_PREFIX) and n not in known]
        for name in orphans:
            storage.move(self.file(name), self.file(f".orphan-{name}"))
        return orphans


_TUNE_STATE = re.compile(r"^(experiment_state-.*\.json|search_gen_state-.*\.json|searcher-state-.*\.pkl)$")


__all__ = ["SweepLayout", "TRIAL_PREFIX", "TEST_SCORES", "BUDGET_STOPPED", "WAITING", "RESULTS", "SAMPLED",
           "FAILED", "TRAIN_RUNS", "POINTER"]
