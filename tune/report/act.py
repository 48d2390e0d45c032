"""Acting on the winner: the checkpoint that holds its ranked value, and the commands that use it.

The report ends with the commands that evaluate or export the winner (or the trial the user named:
``jigclu report SWEEP@<id>``, ``jigclu report SWEEP/trial-<id>``), each runnable as printed: the
trial directory as the user wrote the sweep's path, shell-quoted, on the base configs that ship
in ``configs/`` with the data the trial was pretrained on. ``jigclu linear|semi|knn|export`` take
that trial directory (or ``SWEEP@best``) and load the checkpoint named here
(:mod:`tune.report.winner`), so what the report says and what the commands load are one choice.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

import yaml

from jigclu import storage
from jigclu.errors import JigcluError
from jigclu.storage import StorageError
from tune.report.checkpoints import ranked_checkpoint
from tune.report.data import SweepData, as_given
from tune.report.trial import Trial

CONFIGS = Path(__file__).resolve().parents[2] / "configs"  # the repository's base configs
ENDED = ("finished", "stopped")  # trials whose ranking no longer moves


def act_entry(sweep: SweepData, ranked: list[Trial], metric: str, mode: str, trial_id: str | None = None,
              shown_as: str | None = None) -> dict[str, Any] | None:
    """The ``act`` section: the report's winner (``ranked[0]``), or trial ``trial_id``, with the
    checkpoint of its ranked value and the commands that evaluate and export it. None when nothing
    is ranked (no winner yet) or the report is ranked by another metric than the sweep's own (the
    checkpoints kept are those of the sweep's metric). Raises :class:`JigcluError` for an unknown id."""
    if trial_id not in (None, "best"):
        trial = next((t for t in sweep.trials if t.trial_id == trial_id), None)
        if trial is None:
            known = ", ".join(t.trial_id for t in sweep.trials) or "none yet"
            raise JigcluError(f"sweep {sweep.name} has no trial {trial_id} (its trials: {known})")
    elif metric != sweep.metric or not ranked:
        return None
    else:
        trial = ranked[0]
    named = trial_id not in (None, "best")
    entry: dict[str, Any] = {"trial_id": trial.trial_id, "chosen": "named" if named else "best",
                             "ended": trial.status in ENDED,
                             "any_ended": any(t.status in ENDED for t in ranked),
                             "reference": as_given(shown_as or sweep.location, trial.dirname),
                             "metric": metric, "value": None, "epoch": None, "kept_epoch": None,
                             "checkpoint": None, "ranked": None, "error": None, "commands": []}
    try:
        found = ranked_checkpoint(sweep.location, trial, metric, mode)
    except JigcluError as exc:
        entry["error"] = str(exc)
        return entry
    entry.update(value=found.value, epoch=found.epoch, kept_epoch=found.kept_epoch, checkpoint=found.file,
                 ranked=found.sentence())
    entry["commands"] = commands(sweep, trial, entry["reference"])
    return entry


def commands(sweep: SweepData, trial: Trial, reference: str) -> list[dict[str, str]]:
    """``[{"what", "command"}]``: linear and semi-supervised evaluation (pretraining sweeps), the kNN
    and probe score, and the export; every one runnable as printed."""
    trained = _trial_config(sweep, trial)
    out = []
    if sweep.task == "pretrain":
        for task, what, extra in (("linear", "linear evaluation (frozen backbone)", []),
                                  ("semi", "semi-supervised fine-tuning on 10% of the labels", ["--labels", "10%"])):
            base = _base_config(f"{task}.yaml")
            argv = ["jigclu", task] + (["--config", _shown(base)] if base else []) + extra
            argv += [f"eval.pretrained={reference}", *_data_overrides(trained, base, evaluates=True)]
            out.append({"what": what, "command": shlex.join(argv)})
    knn = ["jigclu", "knn", "--checkpoint", reference, "--probe", *_data_overrides(trained, None, evaluates=False)]
    out.append({"what": "kNN and linear probe on the test split", "command": shlex.join(knn)})
    name = f"{sweep.name}-{trial.trial_id}.pt"
    out.append({"what": "export the backbone (torchvision state dict)",
                "command": shlex.join(["jigclu", "export", reference, name])})
    return out


def _trial_config(sweep: SweepData, trial: Trial) -> dict[str, Any]:
    try:
        config = yaml.safe_load(storage.read_text(sweep.file(trial.dirname, "config.yaml")))
    except (StorageError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return config if isinstance(config, dict) else {}


def _base_config(name: str) -> Path | None:
    path = CONFIGS / name
    return path if path.is_file() else None


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (``configs/linear.yaml``)."""
    try:
        return Path(os.path.relpath(path)).as_posix() if path.is_relative_to(Path.cwd().resolve()) else str(path)
    except ValueError:  # another drive
        return str(path)


def _data_overrides(trained: dict[str, Any], base: Path | None, evaluates: bool) -> list[str]:
    """The trial's data where the base config (or, with none, the defaults) differs: evaluate on
    what the backbone was pretrained on. ``evaluates``: a downstream trainer, whose input side
    ``eval.image_size`` becomes the pretraining's crop size when the base's is larger than the
    trial's images (upsampling 32 px digits to 224 px would only cost time)."""
    from jigclu.config import load_config

    resolved = load_config(str(base) if base else None).model_dump(mode="json")
    data, want = resolved.get("data") or {}, trained.get("data") or {}
    out = [f"data.{key}={_value(want[key])}" for key in ("dataset", "image_size", "num_workers")
           if key in want and want[key] != data.get(key)]
    # the side the backbone's features were scored at: the monitor's, else the montage side
    crop = (trained.get("monitor") or {}).get("image_size") or (trained.get("jigsaw") or {}).get("crop_size")
    size = want.get("image_size")
    eval_size = (resolved.get("eval") or {}).get("image_size")
    if evaluates and crop and eval_size and size and size < eval_size:
        out.append(f"eval.image_size={crop}")
    return out


def _value(value: Any) -> str:
    return "null" if value is None else str(value)


__all__ = ["act_entry", "commands"]
