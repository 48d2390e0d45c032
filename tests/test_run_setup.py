"""One run set-up (jigclu.launch.prepare + jigclu.runs.open_run): a run's config is resolved completely
before anything starts, ``config.yaml`` is written once and is exactly what ran, and the pretrained
checkpoint is read once per process."""

from __future__ import annotations

import yaml

from jigclu.cli import main

DIGITS = ["data.dataset=digits", "model.width=8", "train.progress=false"]


def test_a_downstream_run_writes_its_config_once_and_reads_its_checkpoint_once(tmp_path, monkeypatch):
    import jigclu.pretrained
    from jigclu.runs import RunLayout

    assert main(["pretrain", "--no-progress", *DIGITS, "data.image_size=32", "jigsaw.crop_size=32",
                 "data.batch_size=32", "data.limit=64", "train.epochs=1", "monitor.knn=false",
                 f"output_dir={tmp_path}", "name=pre"]) == 0
    saves, reads = [], []
    save, read = RunLayout.save_config, jigclu.pretrained.load_checkpoint
    monkeypatch.setattr(RunLayout, "save_config", lambda self, cfg: (saves.append(self.root), save(self, cfg))[1])
    monkeypatch.setattr(jigclu.pretrained, "load_checkpoint", lambda f, **kw: (reads.append(f), read(f, **kw))[1])
    assert main(["linear", "--no-progress", *DIGITS, "data.limit=64", f"eval.pretrained={tmp_path / 'pre'}",
                 "eval.epochs=1", "eval.batch_size=32", f"output_dir={tmp_path}", "name=lin"]) == 0
    assert saves == [str(tmp_path / "lin")], saves  # once, before the first step
    assert len(reads) == 1, reads  # adopt_pretrained read it; the trainer got the same weights
    ran = yaml.safe_load((tmp_path / "lin" / "config.yaml").read_text())
    assert ran["model"]["width"] == 8 and ran["jigsaw"]["crop_size"] == 32  # adopted from the checkpoint
    assert ran["eval"]["image_size"] == 32 and ran["eval"]["milestones"] == [] and ran["eval"]["lr"] == 30.0


def test_finetune_resolves_the_datasets_own_size_before_it_starts(tmp_path):
    assert main(["finetune", "--no-progress", *DIGITS, "data.limit=64", "eval.epochs=1", "eval.batch_size=32",
                 f"output_dir={tmp_path}", "name=ft"]) == 0
    ran = yaml.safe_load((tmp_path / "ft" / "config.yaml").read_text())
    assert ran["eval"]["image_size"] == 8  # scikit-learn's digits are 8 x 8: resolved by prepare, saved once
    assert ran["eval"]["protocol"] == "finetune" and ran["eval"]["milestones"] == []
