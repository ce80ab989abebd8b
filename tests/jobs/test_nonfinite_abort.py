"""`learner.max_nonfinite_steps` RL steps in a row whose update was skipped entirely stop jobs.train with a
checkpoint of the unchanged weights and exit status 3; the rerun resumes from it (docs/reliability.md §12).

The non-finite gradient is real: a KL estimator plugin written as sqrt(Δ²) (|ℓ_θ − ℓ_ref|, a plausible
hand-written estimator) has the value 0 where the policy equals the reference, with a NaN gradient there (sqrt's
derivative at 0 is inf, times dΔ²/dΔ = 0). A run starts with π_θ = π_ref, so its first update is skipped, the
weights stay π_ref, and so is every update after it: with max_nonfinite_steps 2 the run stops after step 2.
The rerun, with the cause fixed (the k3 estimator), resumes from step 2 and trains step 3.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from actors.weight_sync import checksum
from jobs.train import main
from model.resolve import tiny_twin

REPO = Path(__file__).resolve().parents[1].parent
CONFIG = "tests/jobs/configs/tiny_lengths.yaml"

ABS_KL = '''
import torch

def abs_kl(logp, ref_logp):
    """|log pi_theta - log pi_ref| as sqrt(delta^2): 0 where the policies agree, and a NaN gradient there."""
    return torch.sqrt((logp - ref_logp) ** 2)
'''


def metrics_of(run_dir: Path) -> dict[int, dict]:
    return {row["step"]: row for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


def test_updates_skipped_in_a_row_stop_the_run_with_a_checkpoint_that_resumes(tmp_path, ray_session, monkeypatch,
                                                                              capsys):
    from rl import losses

    monkeypatch.chdir(REPO)  # the config's reward file and data paths are relative to the repository
    monkeypatch.setattr(losses, "KL_ESTIMATORS", dict(losses.KL_ESTIMATORS))  # the plugin leaves with the test
    plugin = tmp_path / "abs_kl.py"
    plugin.write_text(ABS_KL)
    common = ["--config", CONFIG, "--set", f"run.output_dir={tmp_path}", "--set", "run.name=nan", "--set",
              "run.steps=3", "--set", "checkpoint.every=0"]
    run_dir = tmp_path / "nan"

    code = main([*common, "--set", f"algo.kl.estimator={plugin}:abs_kl", "--set", "learner.max_nonfinite_steps=2"])
    error = capsys.readouterr().err
    assert code == 3, error
    checkpoint = run_dir / "checkpoints" / "step_2"
    assert (f"step 2: the update of the last 2 RL steps was skipped entirely (a NaN or inf loss or gradient on a "
            f"learner rank; learner.max_nonfinite_steps is 2); stopped after saving step 2 to {checkpoint}") in error
    metrics = metrics_of(run_dir)
    assert sorted(metrics) == [1, 2]  # step 3 never ran
    for step in (1, 2):  # μ = 2 optimizer steps per update, both skipped
        assert metrics[step]["health/nonfinite_skips"] == 2
        assert metrics[step]["health/nonfinite_updates_in_a_row"] == step
        assert metrics[step]["loss/kl_ref"] == 0  # the plugin's value: π_θ is still π_ref
        assert metrics[step]["rollout/policy_version"] == step  # a skipped update still counts as one
    assert (checkpoint / "COMPLETE").is_file()  # checkpoint.every 0: saved because of the stop
    # ZeRO-2 keeps the whole module in rank 0's model states: the saved weights are the initial ones
    saved = torch.load(checkpoint / "learner" / "learner" / "mp_rank_00_model_states.pt", weights_only=False)
    initial = tiny_twin("tiny", seed=0).network.state_dict()
    assert checksum(saved["module"].items()) == checksum(initial.items())

    code = main(common)  # the cause fixed: the default k3 estimator; resume: auto
    assert code == 0, capsys.readouterr().err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["start_step"], summary["final_step"], summary["policy_version"]) == (2, 3, 3)
    step_3 = metrics_of(run_dir)[3]
    assert (step_3["health/nonfinite_skips"], step_3["health/nonfinite_updates_in_a_row"]) == (0, 0)
    assert summary["learner_checksums"][0] == summary["learner_checksums"][1] != checksum(initial.items())
