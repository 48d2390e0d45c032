"""The recipe search's last stage keeps the leader with the best validation mean (never the best test
score), only once every seed has finished, and its tables say where a target is missed."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.quality import recipe_report

SEEDS = [0, 1]


def _final(root: Path, sweep: str, trial: str, seed: int, val: float, test: float, knn: float) -> None:
    points = {p: {"probe": test - (30 - float(p)) / 10, "knn": knn} for p in ("5", "10", "20", "30")}
    (root / f"{sweep}-{trial}-s{seed}.json").write_text(json.dumps(
        {"cpu": "AVX512", "val": {"probe": val, "knn": 0.0}, "points": points, "images": 1000 + seed}))


def _plan(root: Path) -> dict[str, list[str]]:
    leaders = {"recipe_fashion": ["aaaa", "bbbb", "cccc"], "recipe_simclr_fashion": ["ssss"]}
    searches = {name: {"counts": {"finished": 3}, "compute_s": 600, "wall_clock_s": 300, "params": {},
                       "leaders": []} for name in leaders}
    (root / "plan.json").write_text(json.dumps({"leaders": leaders, "searches": searches}))
    return leaders


def test_the_best_validation_mean_wins_not_the_best_test_score(tmp_path):
    plan = _plan(tmp_path)
    for seed, (va, vb) in enumerate([(85.0, 84.0), (85.2, 84.1)]):
        _final(tmp_path, "recipe_fashion", "aaaa", seed, va, test=86.0, knn=84.0)
        _final(tmp_path, "recipe_fashion", "bbbb", seed, vb, test=89.0, knn=87.0)  # better on test: not looked at
    _final(tmp_path, "recipe_fashion", "cccc", 0, 99.0, test=99.0, knn=99.0)  # one seed of two: not eligible yet
    full = json.loads((tmp_path / "plan.json").read_text())
    assert recipe_report.winner(tmp_path, full, "recipe_fashion", SEEDS) == "aaaa"
    assert recipe_report.winner(tmp_path, full, "recipe_simclr_fashion", SEEDS) is None  # nothing finished

    for seed in SEEDS:
        _final(tmp_path, "recipe_simclr_fashion", "ssss", seed, 84.0, test=85.5 + seed, knn=83.0)
    (tmp_path / "references.json").write_text(json.dumps({"pixels": {"probe": 84.5, "knn": 86.2},
                                                          "points": {"0": {"probe": 77.0, "knn": 78.0}}}))
    for seed in SEEDS:  # the recipe before the search, on the same split
        _final(tmp_path, "untuned", "jigclu", seed, 80.0, test=87.0 + seed, knn=84.0)
    text = recipe_report.markdown(tmp_path, plan, SEEDS, png=tmp_path / "curve.png")
    assert "Kept (best validation mean): trial `aaaa`" in text
    assert "linear probe >= 90: 86.00, **missed** by 4.00" in text
    assert "kNN above raw pixels by >= 2: 84.00 vs 86.20 (-2.20), **missed** by 4.20" in text
    # SimCLR's seeds 85.5 and 86.5, JigClu's both 86.0: pooled sd 0.50, margin +0.00 at every point
    assert "(pooled sd 0.50): margins +0.00, +0.00, +0.00, +0.00, **not met**" in text
    assert "AVX512" in text
    assert "| `recipe_fashion` trial `aaaa` | 86.00 ± 0.00 | 84.00 ± 0.00 | 2 |" in text
    assert "| `recipe_simclr_fashion` trial `ssss` | 86.00 ± 0.71 | 83.00 ± 0.00 | 2 |" in text
    assert "| raw pixels | 84.50 | 86.20 | - |" in text
    assert "| JigClu, the hand-made recipe (before the search) | 87.50 ± 0.71 | 84.00 ± 0.00 | 2 |" in text
    assert "SimCLR, untuned" not in text  # none ran
    assert "Kept (best validation mean): trial `jigclu`" not in text  # the untuned runs are never candidates
    assert "![tuned JigClu vs tuned SimCLR](curve.png)" in text and (tmp_path / "curve.png").stat().st_size > 1000


def test_a_final_trains_without_the_validation_split_and_scores_it_apart(tmp_path):
    """budget_run on a recipe that carves a validation split (a sweep trial's config): it trains on the
    rest, scores the last snapshot on the validation split for selection, and every snapshot on test."""
    from benchmarks.quality import budget_run

    out = tmp_path / "final.json"
    code = budget_run.main(["--threads", "1", "--points", "0.005,0.01", "--out", str(out), "--no-monitors",
                            "--save", str(tmp_path / "final.pt"), "data.dataset=digits", "data.val_size=0.2",
                            "model.width=8", "data.batch_size=32", "monitor.image_size=16"])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["val_images"] + result["train_images"] == 1437  # digits' training split, val carved out
    assert sorted(result["points"], key=float) == ["0.005", "0.01"] and "monitor_5k_1k" not in result["points"]["0.01"]
    assert 0 <= result["val"]["probe"] <= 100 and result["test_images"] == 360
    assert (tmp_path / "final.pt").is_file()


def test_the_untuned_recipes_train_on_the_finals_split_with_their_old_values(tmp_path):
    import argparse

    from benchmarks.quality import recipe_finals

    trial = tmp_path / "recipe_fashion" / "trial-aaaa"
    trial.mkdir(parents=True)
    (trial / "config.yaml").write_text("data: {dataset: digits, val_size: 0.1}\n")
    args = argparse.Namespace(points="5,30", overrides=["data.limit=100"])
    out, cmd = recipe_finals.untuned_job(tmp_path, tmp_path / "recipe_fashion", "aaaa", "simclr", 1, args)
    assert out.name == "untuned-simclr-s1.json"
    assert cmd[cmd.index("--config") + 1] == str(trial / "config.yaml")  # the sweep's split: val carved out
    assert cmd[cmd.index("--method") + 1] == "simclr" and cmd[cmd.index("--simclr-temperature") + 1] == "0.2"
    assert {"optim.lr=0.2", "jigsaw.crop_scale=0.5", "seed=1", "data.limit=100"} <= set(cmd)
    _, jig = recipe_finals.untuned_job(tmp_path, tmp_path / "recipe_fashion", "aaaa", "jigclu", 0, args)
    assert {"loss.temperature=0.3", "loss.w_loc=1.0", "jigsaw.cross_ratio=0.3"} <= set(jig)
    assert "--simclr-temperature" not in jig
