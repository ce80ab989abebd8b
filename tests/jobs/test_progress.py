"""Progress of the long phases on stderr (the log), never stdout: the held-out evaluation (`eval: 2/3 answers`
per batch where no terminal shows the bar) and weight loading. The shipped 4 MB policy, three problems."""

from __future__ import annotations

import logging
from pathlib import Path

from jobs.data import PromptDataset
from jobs.evaluate import evaluate_policy, local_decoder

REPO = Path(__file__).resolve().parents[2]
HELDOUT = REPO / "data" / "arithmetic" / "heldout.jsonl"
POLICY = REPO / "model" / "assets" / "demo_policy"
SAMPLER = {"gen_length": 8, "steps": 2, "block_length": 8, "temperature": 0.0}


def test_evaluation_and_weight_loading_report_their_progress_on_stderr(caplog, capsys):
    import model

    caplog.set_level(logging.INFO)
    loaded = model.load(POLICY)
    records = PromptDataset(str(HELDOUT)).records[:3]
    _, summary = evaluate_policy(loaded.tokenizer, loaded.config, records, decode=local_decoder(loaded.network),
                                 samples=1, sampler=SAMPLER, thinking=False, seed=0, batch_size=2)
    lines = [(r.name, r.getMessage()) for r in caplog.records if r.name.startswith("unigrpo.")]
    files = list(POLICY.glob("*.safetensors"))
    size = sum(f.stat().st_size for f in files) / 1e9
    assert lines[:2] == [("unigrpo.model", f"loading {POLICY}: {len(files)} weight file(s), {size:.2f} GB, as float32"),
                         ("unigrpo.model", lines[1][1])]
    assert lines[1][1].startswith(f"loaded the weights of {POLICY} in ")
    assert lines[2:5] == [("unigrpo.eval", "eval: 3 problems x 1 sample(s), 8-token responses, batches of 2"),
                          ("unigrpo.eval", "eval: 2/3 answers"), ("unigrpo.eval", "eval: 3/3 answers")]
    name, done = lines[5]
    assert name == "unigrpo.eval" and done.startswith("eval: done in ")
    assert done.endswith(f" s: pass@1 {summary['pass_at_k']['1']:.3f} on 3 problems") and len(lines) == 6
    assert capsys.readouterr().out == ""  # stdout keeps the callers' result lines only
