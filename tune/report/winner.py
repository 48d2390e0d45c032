"""A sweep's trial, or its winner, named where a checkpoint is expected.

``jigclu export``, ``jigclu knn --checkpoint``, ``eval.pretrained=`` (linear, semi, finetune) and
``jigclu report`` take, besides a run directory or a checkpoint file (local or a storage URI):

    SWEEP/trial-<id>   a trial directory: that trial's checkpoint of the value it is ranked by
    SWEEP@<id>         the same trial, by its id
    SWEEP@best         the report's winner: the first trial of ``jigclu report SWEEP``'s ranking

``best`` is the report's own choice (:func:`tune.report.summary.build_report`, no second ranking),
and the checkpoint is the one the report names (:mod:`tune.report.act`): the trial's best epoch,
which the sweep keeps. A URI takes the suffix on its path: ``s3://bucket/sweeps/x@best?region=...``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from jigclu import storage
from jigclu.errors import JigcluError
from tune.layout import TRIAL_PREFIX
from tune.report.data import SweepDirError, load_sweep_dir
from tune.report.summary import build_report

_CHOICE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")  # "best" or a Tune trial id


@dataclass(frozen=True)
class SweepReference:
    """A sweep directory as the user wrote it, and the trial named in it (an id, ``best``, or None)."""

    sweep: str
    trial: str | None


@dataclass(frozen=True)
class Resolved:
    """The checkpoint file a sweep reference means, and what it is, in words."""

    file: str
    trial_id: str
    note: str


def parse_reference(location: str) -> SweepReference | None:
    """The sweep and trial ``location`` names; None when it names none (a run directory, a file)."""
    location = str(location)
    if storage.is_dir(location):
        if storage.is_file(storage.join(location, "sweep.yaml")):
            return SweepReference(location, None)
        name = storage.normalise(location).split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        parent = _parent_as_given(location)
        if name.startswith(TRIAL_PREFIX) and storage.is_file(storage.join(parent, "sweep.yaml")):
            return SweepReference(parent, name.removeprefix(TRIAL_PREFIX))
        return None
    if split_choice(location) is None or storage.exists(location):  # a file, even one with an @ in its name
        return None
    return split_choice(location)


def split_choice(location: str) -> SweepReference | None:
    """``SWEEP@<choice>`` split, from the text alone (a URI's query options stay with the sweep)."""
    head, sep, query = location.partition("?") if storage.is_uri(location) else (location, "", "")
    sweep, at, choice = head.rpartition("@")
    if not at or not sweep or not _CHOICE.match(choice):
        return None
    return SweepReference(sweep.rstrip("/") + sep + query, choice)


def resolve_checkpoint(location: str) -> Resolved | None:
    """The checkpoint file of the trial ``location`` names (None when it names no sweep trial).

    One-line :class:`JigcluError` for a sweep named without a trial, an unknown trial id, a sweep
    with no ended trial (``@best``) and a trial without a checkpoint of its ranked value.
    """
    ref = parse_reference(location)
    if ref is None:
        return None
    if ref.trial is None:
        raise JigcluError(f"{location} is a sweep directory: name one of its trials, {location}@best (the "
                          f"report's winner), {location}@<trial id> or {location}/trial-<id>")
    try:
        sweep = load_sweep_dir(ref.sweep)
    except SweepDirError as exc:
        raise JigcluError(f"{location}: {str(exc).removeprefix('report: ')}") from None
    try:
        act = build_report(sweep, top=0, importances=False, act_on=ref.trial, shown_as=ref.sweep)["act"]
    except JigcluError as exc:  # an unknown trial id
        raise JigcluError(f"{location}: {exc}") from None
    if act is None:
        raise JigcluError(f"{location}: sweep {sweep.name} has no trial with {sweep.metric} yet, so no winner")
    if act["chosen"] == "best" and not act["any_ended"]:
        raise JigcluError(f"{location}: no trial of sweep {sweep.name} has finished yet (trial {act['trial_id']} "
                          f"leads so far); wait for one, or name it: {ref.sweep}@{act['trial_id']}")
    if act["error"]:
        raise JigcluError(f"{location}: {act['error']}")
    note = f"{location}: trial {act['trial_id']} of sweep {sweep.name}, {act['ranked']}: {act['checkpoint']}"
    return Resolved(act["checkpoint"], act["trial_id"], note)


def _parent_as_given(location: str) -> str:
    return storage.parent(location) if storage.is_uri(location) else str(Path(location).parent)


__all__ = ["Resolved", "SweepReference", "parse_reference", "resolve_checkpoint", "split_choice"]
