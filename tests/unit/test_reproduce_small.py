"""scripts/reproduce_small.py: the fixed verdict rule, resuming from a run's result.json, and the report."""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture(scope="module")
def harness():
    spec = importlib.util.spec_from_file_location("scripts_reproduce_small", SCRIPTS / "reproduce_small.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def test_every_arm_names_a_shipped_preset(harness):
    from toolkit.config.preset_names import RENAMED

    shipped = {p.relative_to(p.parents[1]).with_suffix("").as_posix() for p in _preset_files()}
    for comparison in harness.COMPARISONS.values():
        for arm in comparison.arms:
            assert arm.preset in shipped and arm.preset not in RENAMED, arm.preset


def _preset_files():
    from toolkit.config.compose import config_dir

    root = config_dir() / "config"
    return [p for p in root.glob("*/*.yaml") if not p.name.startswith("_")]


def test_better_rule_needs_a_gain_above_tolerance_and_spread(harness):
    t64 = harness.COMPARISONS["t64"]  # lower bpc is better, tolerance 0.02
    aux, none = t64.arms[0].label, t64.arms[1].label
    # the recorded 3-seed result: the auxiliary losses were 0.032 bpc worse
    recorded = {aux: [3.466, 3.458, 3.464], none: [3.432, 3.430, 3.429]}
    assert harness.verdict(t64, recorded).startswith("Effect DID NOT APPEAR")
    gain = {aux: [3.40, 3.41, 3.40], none: [3.43, 3.43, 3.43]}  # 0.027 better, spreads 0.006
    assert harness.verdict(t64, gain).startswith("Effect APPEARED")
    noisy = {aux: [3.30, 3.50, 3.40], none: [3.43, 3.43, 3.43]}  # 0.03 better but the spread is 0.1
    assert harness.verdict(t64, noisy).startswith("Effect DID NOT APPEAR")


def test_matches_rule_allows_tolerance_plus_spread(harness):
    pkm = harness.COMPARISONS["pkm"]  # tolerance 0.03
    memory, deep = pkm.arms[0].label, pkm.arms[1].label
    recorded = {memory: [3.311, 3.318, 3.323], deep: [3.324, 3.351, 3.364]}
    text = harness.verdict(pkm, recorded)
    allowed = 0.03 + statistics.stdev(recorded[deep])
    assert text.startswith("Effect APPEARED") and f"allowed {allowed:.3f}" in text
    far = {memory: [3.0, 3.0, 3.0], deep: [3.4, 3.4, 3.4]}
    assert harness.verdict(pkm, far).startswith("Effect DID NOT APPEAR")


def test_a_finished_run_is_reused_and_a_stale_folder_refused(harness, tmp_path, capsys):
    pkm = harness.COMPARISONS["pkm"]
    arm = pkm.arms[1]
    run_dir = tmp_path / "pkm" / "4_layers_no_memory" / "seed1"
    run_dir.mkdir(parents=True)
    steps = 200
    command = [
        "tk-train",
        f"config={arm.preset}",
        f"data={pkm.data}",
        f"run_dir={run_dir}",
        "seed=1",
        f"max_update={steps}",
        f"validate_interval={steps // 6}",
        f"save_interval={steps}",
        *harness.COMMON,
        *pkm.common,
        *arm.overrides,
    ]
    saved = {"final": 3.35, "command": " ".join(command), "params": {}, "valid": [(33, 3.9), (200, 3.4)]}
    (run_dir / "result.json").write_text(json.dumps(saved))
    (run_dir / "summary.json").write_text(json.dumps({"wall_seconds": 61.5}))
    expected = {**saved, "valid": [[33, 3.9], [200, 3.4]], "resumed": True, "seconds": 61.5}
    assert harness.train(pkm, arm, 1, steps, tmp_path, []) == expected
    assert "done before" in capsys.readouterr().out
    # another budget for the same folder: refused rather than overwritten
    with pytest.raises(SystemExit, match="exists without a matching result.json"):
        harness.train(pkm, arm, 1, steps + 1, tmp_path, [])


def test_report_states_budget_reason_per_seed_values_and_verdict(harness):
    pkm = harness.COMPARISONS["pkm"]
    memory, deep = pkm.arms[0].label, pkm.arms[1].label
    run = lambda final: {"final": final, "command": "tk-train ...", "params": {"parameters": 10}, "valid": []}  # noqa: E731
    results = {memory: [run(3.311), run(3.318), run(3.323)], deep: [run(3.324), run(3.351), run(3.364)]}
    text = harness.report(pkm, results, pkm.default_updates, 3, ["model.d_model=128"])
    assert pkm.budget_reason in text
    assert "Overrides for every run (`--set`): `model.d_model=128`." in text
    assert f"| {memory} | 3.317 ± 0.006 | 3.311, 3.318, 3.323 | parameters 10 |" in text
    assert "Effect APPEARED" in text
    assert "Time:" not in text  # no run recorded its wall-clock


def test_report_adds_up_the_runs_wall_clock(harness):
    pkm = harness.COMPARISONS["pkm"]
    run = lambda seconds: {"final": 3.3, "command": "", "params": {}, "valid": [], "seconds": seconds}  # noqa: E731
    results = {pkm.arms[0].label: [run(100.0), run(140.0)], pkm.arms[1].label: [run(120.0), run(240.0)]}
    text = harness.report(pkm, results, 200, 2, [], harness.Elapsed(330.0, 2, 0.4))
    assert (
        "Time: 4 runs of one thread, 10.0 minutes of training in all (100-240 s per run, evaluation included); "
        "this comparison took 5.5 minutes of wall-clock with --jobs 2 (load average 0.4 when it started)."
    ) in text


def test_runs_side_by_side_are_reported_per_arm_in_seed_order(harness, tmp_path, monkeypatch):
    pkm = harness.COMPARISONS["pkm"]
    labels = [arm.label for arm in pkm.arms]
    started = []

    def fake_train(comparison, arm, seed, updates, out, extra):
        started.append((arm.label, seed))
        final = 3.0 + labels.index(arm.label) + seed / 100
        return {"final": final, "command": f"{arm.label} {seed}", "params": {}, "valid": [(updates, final)]}

    monkeypatch.setattr(harness, "train", fake_train)
    monkeypatch.chdir(tmp_path)
    (tmp_path / pkm.data).mkdir(parents=True)
    argv = ["reproduce_small.py", "--only", "pkm", "--seeds", "3", "--jobs", "2", "--out", "out", "--docs", "docs"]
    monkeypatch.setattr(sys, "argv", argv)
    harness.main()
    assert sorted(started) == sorted((label, seed) for label in labels for seed in (1, 2, 3))
    results = json.loads((tmp_path / "out" / "pkm" / "results.json").read_text())
    assert [[run["final"] for run in results[label]] for label in labels] == [[3.01, 3.02, 3.03], [4.01, 4.02, 4.03]]
    assert "| 3.020 ± 0.010 | 3.010, 3.020, 3.030 |" in (tmp_path / "docs" / "pkm.md").read_text()


def test_jobs_below_one_is_a_user_error(harness, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["reproduce_small.py", "--jobs", "0"])
    with pytest.raises(SystemExit) as stopped:
        harness.main()
    assert stopped.value.code == 2
    assert "--seeds and --jobs must be >= 1" in capsys.readouterr().err
