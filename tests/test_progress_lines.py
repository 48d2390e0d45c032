"""What a log shows of a training command: one plain line at the start, one per epoch and one at the
end, with ``--no-progress`` and whenever stdout is not a terminal (a RayJob, a CI log, ``| tee``).
Before, ``--no-progress`` printed nothing until the run ended."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.dataset=digits", "data.image_size=32", "model.width=8", "data.limit=64"]


def jigclu(*args: str) -> list[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TERM": "xterm-256color"}  # a terminal would draw a bar
    proc = subprocess.run([sys.executable, "-m", "jigclu.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.splitlines()


def test_no_progress_prints_one_line_per_event(tmp_path):
    lines = jigclu("pretrain", "--no-progress", *TINY, "jigsaw.crop_size=32", "data.batch_size=32",
                   "train.steps_per_epoch=2", "monitor.knn=false", "train.epochs=3", f"output_dir={tmp_path}",
                   "name=logged")
    assert lines[0] == "pretrain run logged: 3 epochs of 2 steps, from the start", lines
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/3", "2/3", "3/3"], lines
    assert lines.index(epochs[-1]) < next(i for i, line in enumerate(lines) if line.startswith("pretrain finished"))
    assert not any("\x1b[" in line or "━" in line for line in lines), lines  # no bar, no colour codes in a log
    assert all(len(line) < 300 for line in lines) and not any(line.startswith(" ") for line in lines), lines

    # a downstream trainer, progress left on, stdout not a terminal: the same plain lines, not a bar
    lines = jigclu("linear", *TINY, "eval.batch_size=32", "eval.epochs=2", "train.steps_per_epoch=2",
                   f"eval.pretrained={tmp_path / 'logged'}", f"output_dir={tmp_path}", "name=probe")
    epochs = [line for line in lines if line.startswith("linear epoch ")]
    assert [line.split()[2] for line in epochs] == ["1/2", "2/2"], lines
    assert lines.index("linear run probe: 2 epochs of 2 steps, from the start") < lines.index(epochs[0]), lines
    assert all(len(line) < 300 for line in lines) and not any(line.startswith(" ") for line in lines), lines
    assert not any("\x1b[" in line or "━" in line for line in lines), lines

    # train.progress=false (sweep trials, scripts): only the summary
    lines = jigclu("pretrain", "--no-progress", *TINY, "jigsaw.crop_size=32", "data.batch_size=32",
                   "train.steps_per_epoch=2", "monitor.knn=false", "train.epochs=1", "train.progress=false",
                   f"output_dir={tmp_path}", "name=quiet")
    assert not any(line.startswith(("epoch ", "pretrain run")) for line in lines), lines
