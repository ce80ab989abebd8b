"""One bad row never kills a run (tracker issue 18 finding 5): a lone surrogate, a line that is not UTF-8, a
corrupt image and a prompt longer than the model takes are each reported as `file:row: reason` and skipped
when the data loads (the length once the tokenizer and model are known), and the other rows load."""

from __future__ import annotations

import json
import logging
import types

import numpy as np
import pytest

from jobs.data import DataError, PromptDataset
from model.templates import chat_prompt_ids

GOOD = {"prompt": "What is 2+2?", "answer": "4", "task": "text"}


@pytest.fixture(scope="module")
def tokenizer():
    from model.tokenizer import load_tiny_tokenizer

    return load_tiny_tokenizer()


def write_rows(path, rows):
    """Rows as JSON lines (json.dumps escapes a lone surrogate as the six characters \\ud800)."""
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def png(path, value=100):
    from PIL import Image

    Image.fromarray(np.full((4, 5, 3), value, np.uint8)).save(path)
    return path


@pytest.mark.parametrize("field", ["prompt", "answer", "uid"])
def test_a_lone_surrogate_is_a_bad_row_naming_file_and_row(tmp_path, caplog, field):
    row = {**GOOD, "uid": "b", field: "ab\ud800c"}
    path = write_rows(tmp_path / "d.jsonl", [{**GOOD, "uid": "a"}, row, {**GOOD, "uid": "c"}])
    assert "\\ud800" in path.read_text()  # escaped in the file, as a JSON writer leaves it
    with caplog.at_level(logging.WARNING, logger="jobs.data"):
        data = PromptDataset(path)
    assert [r.uid for r in data.records] == ["a", "c"]
    assert data.problems == [f"{path}:2: '{field}' holds a lone surrogate U+D800 at character 3, which no tokenizer "
                             "can encode; write the character itself, or both halves of its surrogate pair "
                             '(e.g. "\\ud83d\\ude00")']
    assert "skipped 1 bad row(s)" in caplog.text and f"{path}:2: '{field}' holds a lone surrogate" in caplog.text


def test_a_surrogate_pair_is_fine(tmp_path, tokenizer):
    path = write_rows(tmp_path / "d.jsonl", [{**GOOD, "prompt": "smile \ud83d\ude00"}])
    data = PromptDataset(path)
    assert data.records[0].prompt == "smile \U0001F600" and data.problems == []
    assert data.check_prompts(tokenizer, max_sequence_length=4096, gen_length=256) == []


def test_a_line_that_is_not_utf8_is_one_bad_row_and_the_rest_of_the_file_loads(tmp_path, caplog):
    path = tmp_path / "d.jsonl"
    bad = b'{"prompt": "caf\xe9", "task": "text"}'  # Latin-1 e-acute
    path.write_bytes(b"\n".join([json.dumps(GOOD).encode(), bad, b'{"prompt": "\xc3\xa9t\xc3\xa9", "task": "text"}',
                                 b'\xff\xfe{"prompt": "x", "task": "text"}']) + b"\n")
    with caplog.at_level(logging.WARNING, logger="jobs.data"):
        data = PromptDataset(path)
    assert [r.prompt for r in data.records] == ["What is 2+2?", "\u00e9t\u00e9"]
    column = bad.index(b"\xe9") + 1
    assert data.problems == [f"{path}:2: not UTF-8 (byte 0xe9 at column {column}); save the file as UTF-8",
                             f"{path}:4: not UTF-8 (byte 0xff at column 1); save the file as UTF-8"]
    assert "skipped 2 bad row(s)" in caplog.text and f"{path}:2: not UTF-8" in caplog.text


def test_a_file_with_no_utf8_line_is_an_error_naming_its_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"prompt": "\xe9"}\n')
    with pytest.raises(DataError, match=rf"no usable rows in .*\n  {path}:1: not UTF-8 \(byte 0xe9 at column 13\)"):
        PromptDataset(path)


def test_a_corrupt_image_is_a_bad_row_at_load_not_when_drawn(tmp_path, caplog):
    png(tmp_path / "good.png")
    (tmp_path / "junk.png").write_bytes(b"these bytes are not an image")
    whole = (tmp_path / "good.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[: len(whole) // 2])  # a PNG header, truncated pixel data
    path = write_rows(tmp_path / "d.jsonl", [
        {"prompt": "Describe.", "task": "captioning", "image": "good.png"},   # 1 good
        {"prompt": "Describe.", "task": "captioning", "image": "junk.png"},   # 2 not an image
        {"prompt": "Describe.", "task": "captioning", "image": "cut.png"},    # 3 truncated
        {"prompt": "Again.", "task": "captioning", "image": "junk.png"},      # 4 the same bad file: reported again
        {"prompt": "Same.", "task": "captioning", "image": "good.png"},       # 5 good
    ])
    with caplog.at_level(logging.WARNING, logger="jobs.data"):
        data = PromptDataset(path, image_tasks={"captioning"})
    assert [r.uid for r in data.records] == ["d.jsonl:1", "d.jsonl:5"]
    assert [p.split(": image ")[0] for p in data.problems] == [f"{path}:2", f"{path}:3", f"{path}:4"]
    for problem, name in zip(data.problems, ["junk.png", "cut.png", "junk.png"]):
        assert f"image '{(tmp_path / name).resolve()}' cannot be read as an image: " in problem, problem
        assert problem.endswith("; replace it with a PNG, JPEG or other image file PIL reads"), problem
    assert "skipped 3 bad row(s)" in caplog.text and f"{path}:2: image " in caplog.text
    # a job that samples text only may skip reading images (it refuses image rows itself)
    assert len(PromptDataset(path, read_images=False).records) == 5


def test_a_prompt_too_long_for_the_model_is_reported_and_skipped(tmp_path, tokenizer, caplog):
    long_prompt = " ".join(["word"] * 60)
    path = write_rows(tmp_path / "d.jsonl", [
        {**GOOD, "uid": "short"},
        {**GOOD, "uid": "long", "prompt": long_prompt},
        {**GOOD, "uid": "mask", "prompt": "fill <|mdm_mask|> in"},
    ])
    data = PromptDataset(path)
    fits = len(chat_prompt_ids(tokenizer, GOOD["prompt"], thinking=False))
    length = len(chat_prompt_ids(tokenizer, long_prompt, thinking=False))
    max_len, gen = 64, 16
    assert fits <= max_len - gen < length  # the sizes this test relies on
    with caplog.at_level(logging.WARNING, logger="jobs.data"):
        problems = data.check_prompts(tokenizer, max_sequence_length=max_len, gen_length=gen)
    assert [r.uid for r in data.records] == ["short"]
    assert problems == [
        f"{path}:2: the chat prompt has {length} tokens, but max_sequence_length 64 - gen_length 16 leaves 48; "
        f"shorten the prompt by {length - 48} tokens or lower gen_length",
        f"{path}:3: the prompt holds the mask token <|mdm_mask|> (id {tokenizer.convert_tokens_to_ids('<|mdm_mask|>')}); "
        "prompts must be fully known, remove it",
    ]
    assert data.problems == problems  # surfaced with the load's bad rows
    assert "skipped 2 row(s) whose prompt the model cannot take" in caplog.text and f"{path}:2: the chat" in caplog.text
    with pytest.raises(DataError, match=rf"no prompt the model can take:\n  {path}:1: the chat prompt has {fits} tokens"):
        data.check_prompts(tokenizer, max_sequence_length=fits + 15, gen_length=16)


def test_the_thinking_instruction_counts(tmp_path, tokenizer):
    from jobs.data import check_prompt_records

    path = write_rows(tmp_path / "d.jsonl", [GOOD])
    plain = len(chat_prompt_ids(tokenizer, GOOD["prompt"], thinking=False))
    records = PromptDataset(path).records
    assert check_prompt_records(records, tokenizer, max_sequence_length=plain + 8, gen_length=8) == (records, [])
    with pytest.raises(DataError, match=r"tokens \(thinking instruction included\), but max_sequence_length"):
        check_prompt_records(records, tokenizer, max_sequence_length=plain + 8, gen_length=8, thinking=True)


def test_training_check_uses_the_run_config_and_counts_image_tokens(tmp_path, tokenizer):
    from jobs.config import load_config
    from jobs.data import check_training_prompts

    png(tmp_path / "cat.png")
    path = write_rows(tmp_path / "d.jsonl", [
        {"uid": "t", "task": "text", "prompt": "Compute 2+2."},
        {"uid": "c", "task": "captioning", "prompt": "Compute 2+2.", "image": "cat.png"},
        {"uid": "s", "task": "t2i", "prompt": " ".join(["red"] * 200)},  # the worker cuts t2i text itself
    ])
    cfg = load_config(None, [f"data.train={path}", "data.thinking=false", "rollout.sampler.gen_length=16",
                             "rollout.sampler.block_length=16", "rollout.sampler.steps=16"])
    chat = len(chat_prompt_ids(tokenizer, "Compute 2+2.", thinking=False))
    mmada = types.SimpleNamespace(max_sequence_length=chat + 16 + 10, mmada={"codebook_size": 64, "num_vq_tokens": 8})
    data = PromptDataset(path, image_tasks={"captioning"})
    assert check_training_prompts(data, cfg, tokenizer, mmada) == [
        f"{path}:2: the mmu prompt has {chat} tokens + 11 image tokens, but max_sequence_length {chat + 26} - "
        f"gen_length 16 leaves {chat + 10}; shorten the prompt by 1 tokens or lower gen_length"]
    assert [r.uid for r in data.records] == ["t", "s"]
    llada = types.SimpleNamespace(max_sequence_length=chat + 16, mmada={})
    data = PromptDataset(path, image_tasks={"captioning"})
    assert check_training_prompts(data, cfg, tokenizer, llada) == []


def test_evaluation_skips_and_reports_a_prompt_too_long(tmp_path, caplog):
    from jobs.evaluate import evaluate_policy, local_decoder
    from model.tiny import tiny_model

    loaded = tiny_model(0, max_sequence_length=64)
    path = write_rows(tmp_path / "d.jsonl", [{**GOOD, "uid": "ok"}, {**GOOD, "uid": "long", "prompt": "x " * 80}])
    records = PromptDataset(path).records
    sampler = {"gen_length": 8, "steps": 4, "block_length": 8, "temperature": 0.0, "remasking": "low_confidence"}
    with caplog.at_level(logging.WARNING, logger="jobs.data"):
        rows, summary = evaluate_policy(loaded.tokenizer, loaded.config, records, decode=local_decoder(loaded.network),
                                        samples=1, sampler=sampler, thinking=False, seed=0, batch_size=4)
    assert [r["uid"] for r in rows] == ["ok"] and summary["n_problems"] == 1
    assert f"{path}:2: the chat prompt has" in caplog.text and "max_sequence_length 64 - gen_length 8" in caplog.text


def test_the_rollout_job_reports_a_lone_surrogate_row_and_samples_the_rest(tmp_path):
    from jobs.config import DEFAULT_CONFIG, load_config
    from jobs.rollout_plan import make_plan

    path = write_rows(tmp_path / "p.jsonl", [{"uid": "a", "prompt": "hi"}, {"uid": "b", "prompt": "\ud800"},
                                             {"uid": "c", "prompt": "x " * 5000}])
    plan = make_plan(load_config(DEFAULT_CONFIG, ["model.path=tiny", f"generate.prompts={path}",
                                                  "rollout.sampler={gen_length: 8, steps: 4, block_length: 4}"]))
    assert [r.uid for r in plan.records] == ["a"]
    assert plan.bad_rows[0].startswith(f"{path}:2: 'prompt' holds a lone surrogate U+D800")
    assert plan.bad_rows[1].startswith(f"{path}:3: the chat prompt has")


def test_chat_prompts_are_measured_whole_and_refused_for_t2i(tmp_path, tokenizer):
    """A chat row is checked (and sampled, jobs/multitask.py: build_requests) as its whole conversation; a t2i
    row must be text, so chat messages there are a bad row."""
    from jobs.config import load_config
    from jobs.data import check_training_prompts
    from jobs.multitask import build_requests

    chat = [{"role": "system", "content": "Answer with a number."}, {"role": "user", "content": "Compute 2+2."}]
    path = write_rows(tmp_path / "d.jsonl", [{"uid": "c", "task": "text", "prompt": chat},
                                             {"uid": "s", "task": "t2i", "prompt": chat},
                                             {"uid": "t", "task": "text", "prompt": "Compute 2+2."}])
    cfg = load_config(None, [f"data.train={path}", "data.thinking=false", "rollout.sampler.gen_length=16",
                             "rollout.sampler.block_length=16", "rollout.sampler.steps=16", "algo.group_size=2"])
    data = PromptDataset(path)
    whole = chat_prompt_ids(tokenizer, data.records[0].prompt, thinking=False)
    assert len(whole) > len(chat_prompt_ids(tokenizer, "Compute 2+2.", thinking=False)) + 4  # the system turn counts
    short = types.SimpleNamespace(max_sequence_length=len(whole) + 15, mmada={})
    assert check_training_prompts(data, cfg, tokenizer, short) == [
        f"{path}:1: the chat prompt has {len(whole)} tokens, but max_sequence_length {len(whole) + 15} - gen_length "
        f"16 leaves {len(whole) - 1}; shorten the prompt by 1 tokens or lower gen_length",
        f"{path}:2: a t2i prompt is the text the image is drawn from; give text, not 2 chat messages"]
    data = PromptDataset(path)
    fits = types.SimpleNamespace(max_sequence_length=len(whole) + 16, mmada={})
    assert len(check_training_prompts(data, cfg, tokenizer, fits)) == 1 and [r.uid for r in data.records] == ["c", "t"]
    requests = build_requests(data.records[:1], tokenizer, cfg, lambda path: None, samples=2)
    assert [list(r.prompt_ids) for r in requests] == [whole, whole]
    assert [r.prompt for r in requests] == ["Compute 2+2.", "Compute 2+2."]  # the row's text: the last user message
