"""Prompt datasets: validation with row numbers, exactly-once epochs, exact cursor resume."""

from __future__ import annotations

import json
import logging
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.data import DataError, PromptDataset, PromptStream, load_image


def write_jsonl(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def png(path):
    """A real (tiny) PNG: images are read when the data loads."""
    import numpy as np
    from PIL import Image

    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(path)


def good_rows(n, task="text"):
    return [{"prompt": f"q{i}", "answer": str(i), "task": task, "uid": f"u{i}"} for i in range(n)]


def test_jsonl_fields_meta_defaults_and_image_paths(tmp_path):
    png(tmp_path / "img.png")
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"question": "What is 2+2?", "answer": 4, "task": "text", "level": 3},
        {"question": "Describe.", "task": "mmu", "image": "img.png", "uid": 17},
    ])
    data = PromptDataset(path, fields={"prompt": "question"})
    first, second = data.records
    assert (first.uid, first.prompt, first.answer, first.task) == ("d.jsonl:1", "What is 2+2?", "4", "text")
    assert first.meta == {"level": 3} and first.image is None and first.source == f"{path}:1"
    assert second.uid == "17" and second.answer is None and second.image == str((tmp_path / "img.png").resolve())
    assert data.problems == []


def test_bad_rows_reported_with_row_numbers_and_skipped(tmp_path, caplog):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"prompt": "ok", "task": "text", "uid": "a"},            # 1 good
        "{not json",                                             # 2
        {"task": "text"},                                        # 3 no prompt
        {"prompt": "   ", "task": "text"},                       # 4 empty prompt
        {"prompt": "p"},                                         # 5 no task, no default
        {"prompt": "p", "task": "text", "answer": [1, 2]},       # 6 answer not text
        {"prompt": "p", "task": "text", "image": "missing.png"}, # 7 image missing
        {"prompt": "p2", "task": "text", "uid": "a"},            # 8 duplicate uid
        "[1, 2]",                                                # 9 not an object
        "",                                                      # 10 blank: skipped silently
        {"prompt": "fine", "task": "text"},                      # 11 good
    ])
    with caplog.at_level(logging.WARNING, logger="jobs.data"):
        data = PromptDataset(path)
    assert [r.uid for r in data.records] == ["a", "d.jsonl:11"]
    rows = [int(p.split(":")[1]) for p in data.problems]
    assert rows == [2, 3, 4, 5, 6, 7, 8, 9]
    expected = ["not valid JSON", "missing 'prompt'", "'prompt' is empty", "missing 'task' (or set data.default_task)",
                "'answer' must be text, got list", "missing.png' does not exist", "duplicate uid 'a' (first at",
                "expected a JSON object, got list"]
    for problem, words in zip(data.problems, expected):
        assert problem.startswith(f"{path}:") and words in problem, problem
    assert "skipped 8 bad row(s)" in caplog.text


def test_image_tasks_need_an_image(tmp_path):
    png(tmp_path / "img.png")
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"prompt": "Describe.", "task": "captioning", "image": "img.png"},   # 1 good
        {"prompt": "Describe.", "task": "captioning"},                      # 2 no image
        {"prompt": "Describe.", "task": "mmu", "picture": "img.png"},       # 3 image under another name
        {"prompt": "a red circle", "task": "t2i"},                          # 4 good: t2i needs none
    ])
    data = PromptDataset(path, image_tasks={"captioning", "mmu"})
    assert [r.uid for r in data.records] == ["d.jsonl:1", "d.jsonl:4"]
    assert data.problems == [f"{path}:2: task 'captioning' needs an image (it is sampled as image understanding); "
                             "'image' is missing",
                             f"{path}:3: task 'mmu' needs an image (it is sampled as image understanding); "
                             "'image' is missing"]
    assert len(PromptDataset(path).records) == 4  # without image_tasks every row is fine


def test_load_image_gives_rgb_uint8_whatever_the_file_mode(tmp_path):
    import numpy as np
    from PIL import Image

    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb[:, :, 0]).save(tmp_path / "grey.png")  # mode L
    Image.fromarray(np.dstack([rgb, np.full((2, 3), 7, np.uint8)])).save(tmp_path / "rgba.png")
    loaded = load_image(tmp_path / "rgb.png")
    assert loaded.dtype == np.uint8 and loaded.shape == (2, 3, 3) and np.array_equal(loaded, rgb)
    assert not loaded.flags.writeable  # shared by a prompt's requests and samples: nobody may change it
    assert np.array_equal(load_image(tmp_path / "grey.png"), np.repeat(rgb[:, :, :1], 3, axis=2))
    assert np.array_equal(load_image(tmp_path / "rgba.png"), rgb)  # alpha dropped
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    for name in ("broken.png", "absent.png"):
        with pytest.raises(DataError, match=f"image '.*{name}' cannot be read as an image"):
            load_image(tmp_path / name)


def test_default_task_fills_missing_tasks(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p"}])
    assert PromptDataset(str(path), default_task="text").records[0].task == "text"


def test_all_rows_bad_is_an_error_listing_them(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"task": "text"}, "oops"])
    with pytest.raises(DataError) as err:
        PromptDataset(path)
    assert f"{path}:1: missing 'prompt'" in str(err.value) and f"{path}:2: not valid JSON" in str(err.value)


def test_long_problem_lists_are_truncated_in_the_error(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"task": "t"}] * 25)
    with pytest.raises(DataError, match=r"\.\.\. and 5 more"):
        PromptDataset(path)


def test_parquet_rows_and_mixed_files(tmp_path):
    table = pa.table({"prompt": ["a", None, "c"], "task": ["text"] * 3, "answer": ["1", "2", "3"], "extra": [1, 2, 3]})
    pq.write_table(table, tmp_path / "d.parquet")
    jsonl = write_jsonl(tmp_path / "e.jsonl", [{"prompt": "z", "task": "text"}])
    data = PromptDataset([tmp_path / "d.parquet", str(jsonl)])
    assert [r.uid for r in data.records] == ["d.parquet:1", "d.parquet:3", "e.jsonl:1"]
    assert data.records[1].meta == {"extra": 3}
    assert data.problems == [f"{tmp_path / 'd.parquet'}:2: missing 'prompt'"]


def test_file_errors_name_the_file(tmp_path):
    for nothing in ([], ""):
        with pytest.raises(DataError, match="no data file given; set data.train"):
            PromptDataset(nothing)
    with pytest.raises(DataError, match="data file '.*nope.jsonl' does not exist"):
        PromptDataset(tmp_path / "nope.jsonl")
    (tmp_path / "d.csv").write_text("prompt\n")
    with pytest.raises(DataError, match="cannot tell the format from the suffix '.csv'"):
        PromptDataset(tmp_path / "d.csv")
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="not a readable parquet file"):
        PromptDataset(tmp_path / "bad.parquet")
    # format given explicitly overrides the suffix
    write_jsonl(tmp_path / "rows.txt", good_rows(1))
    assert len(PromptDataset(tmp_path / "rows.txt", format="jsonl")) == 1


def test_argument_checks(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", good_rows(1))
    with pytest.raises(ValueError, match=r"fields: unknown field\(s\) \['question'\]; valid: prompt, answer, task, "
                                         r"image, uid, response"):
        PromptDataset(path, fields={"question": "q"})
    with pytest.raises(ValueError, match="default_task: empty"):
        PromptDataset(path, default_task=" ")
    with pytest.raises(ValueError, match="format 'csv'; valid: auto, jsonl, parquet"):
        PromptDataset(path, format="csv")


@pytest.fixture
def dataset(tmp_path):
    return PromptDataset(write_jsonl(tmp_path / "d.jsonl", good_rows(10)))


def test_every_prompt_exactly_once_per_epoch_with_batches_spanning_epochs(dataset):
    stream = PromptStream(dataset, seed=3)
    drawn = [r.uid for _ in range(10) for r in stream.next_batch(3)]  # 30 draws = 3 epochs of 10
    for epoch in range(3):
        assert Counter(drawn[10 * epoch:10 * (epoch + 1)]) == Counter(f"u{i}" for i in range(10))
    assert drawn[:10] != drawn[10:20]  # a new order every epoch
    assert (stream.epoch, stream.position) == (3, 0)
    # the order is a pure function of (seed, epoch): a new stream reproduces it; another seed does not
    assert [r.uid for r in PromptStream(dataset, seed=3).next_batch(10)] == drawn[:10]
    assert [r.uid for r in PromptStream(dataset, seed=4).next_batch(10)] != drawn[:10]


def test_no_shuffle_keeps_file_order(dataset):
    stream = PromptStream(dataset, shuffle=False)
    assert [r.uid for r in stream.next_batch(12)] == [f"u{i}" for i in range(10)] + ["u0", "u1"]


@pytest.mark.parametrize("consumed", [4, 10, 13])  # mid-epoch, exactly at the boundary, mid second epoch
def test_cursor_resume_is_exact(dataset, consumed):
    reference = PromptStream(dataset, seed=7)
    expected = [r.uid for r in reference.next_batch(consumed)], [r.uid for r in reference.next_batch(15)]
    first = PromptStream(dataset, seed=7)
    assert [r.uid for r in first.next_batch(consumed)] == expected[0]
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint stores
    resumed = PromptStream(dataset, seed=7)
    resumed.load_state_dict(state)
    assert (resumed.epoch, resumed.position) == divmod(consumed, 10)
    assert [r.uid for r in resumed.next_batch(15)] == expected[1]


def test_cursor_refuses_other_data_or_seed(dataset, tmp_path):
    state = PromptStream(dataset, seed=1).state_dict()
    with pytest.raises(DataError, match="saved seed=1 but the current data has seed=2"):
        PromptStream(dataset, seed=2).load_state_dict(state)
    other = PromptDataset(write_jsonl(tmp_path / "o.jsonl", good_rows(9)))
    with pytest.raises(DataError, match="saved fingerprint"):
        PromptStream(other, seed=1).load_state_dict(state)
    with pytest.raises(DataError, match="outside 0 <= position < 10"):
        PromptStream(dataset, seed=1).load_state_dict({**state, "position": 10})
    with pytest.raises(ValueError, match="batch size 0"):
        PromptStream(dataset).next_batch(0)


# -- data.fields, chat prompts, several files and mixtures (docs/data.md) ------------------------------------
def test_fields_rename_record_and_response_columns_and_are_checked_at_config_load(tmp_path):
    from jobs.config import load_config
    from jobs.configtree import ConfigError

    path = write_jsonl(tmp_path / "d.jsonl", [
        {"q": "What is 2+2?", "gold": 4, "completion": "<think>2+2</think>\\boxed{4}", "response": "ignored", "k": 1}])
    cfg = load_config(None, [f"data.train={path}", "data.fields={prompt: q, answer: gold, response: completion}"])
    (record,) = PromptDataset(cfg.data.train_files, fields=cfg.data.fields, default_task="text").records
    assert (record.prompt, record.answer) == ("What is 2+2?", "4")
    # the mapped column is SFT's response, under our name (over a column that happens to be called so)
    assert record.meta == {"response": "<think>2+2</think>\\boxed{4}", "k": 1}
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"data.train={path}", "data.fields={promt: x, answer: q, task: q, uid: ' '}"])
    assert info.value.problems == [
        "data.fields: unknown field(s) ['promt']; valid: prompt, answer, task, image, uid, response",
        "data.fields.uid: ' '; give the column name in the data files",
        "data.fields: answer and task both read the column 'q'; map each to its own",
    ]


def test_chat_message_prompts_load_and_bad_ones_are_reported_by_row(tmp_path):
    from model.templates import ChatPrompt

    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}]
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"prompt": chat, "task": "text"},                                                  # 1 good
        {"prompt": [], "task": "text"},                                                    # 2 empty list
        {"prompt": [{"role": "robot", "content": "x"}], "task": "text"},                   # 3 bad role
        {"prompt": [{"role": "user"}], "task": "text"},                                    # 4 no content
        {"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "task": "text"},  # 5
        {"prompt": [{"role": "user", "content": "q", "name": "x"}], "task": "text"},       # 6 unknown key
        {"prompt": ["hi"], "task": "text"},                                                # 7 not an object
        {"prompt": [{"role": "user", "content": "a\ud800"}], "task": "text"},             # 8 lone surrogate
    ])
    data = PromptDataset(path)
    (record,) = data.records
    assert isinstance(record.prompt, ChatPrompt) and record.prompt == "And 3+3?"  # the text: the last user message
    assert list(record.prompt.messages) == chat
    assert data.problems == [
        f"{path}:2: 'prompt': chat messages: got []; need a non-empty list of {{\"role\": ..., \"content\": ...}} objects",
        f"{path}:3: 'prompt': message 1: role 'robot'; valid: system, user, assistant",
        f"{path}:4: 'prompt': message 1 (user): content None must be non-empty text",
        f"{path}:5: 'prompt': message 2: the last message is from the assistant; a prompt ends with a user message "
        "(the policy writes the assistant's answer)",
        f"{path}:6: 'prompt': message 1: unknown key(s) ['name']; a message has 'role' and 'content' only",
        f"{path}:7: 'prompt': message 1: expected an object with 'role' and 'content', got 'hi'",
        f"{path}:8: 'prompt[0].content' holds a lone surrogate U+D800 at character 2, which no tokenizer can encode; "
        "write the character itself, or both halves of its surrogate pair (e.g. \"\\ud83d\\ude00\")",
    ]


def test_files_of_one_name_report_the_default_uid_collision(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    rows = [{"prompt": "p", "task": "text"}]
    first, second = write_jsonl(tmp_path / "a" / "t.jsonl", rows), write_jsonl(tmp_path / "b" / "t.jsonl", rows)
    data = PromptDataset([first, second])
    assert [r.uid for r in data.records] == ["t.jsonl:1"]
    assert data.problems == [f"{second}:1: duplicate uid 't.jsonl:1' (first at {first}:1); a row without 'uid' is "
                             "<file name>:<row>: rename one of the files, or give the rows uids"]


def test_train_forms_and_their_config_errors():
    from jobs.config import DataSource, load_config
    from jobs.configtree import ConfigError

    one = load_config(None, ["data.train=a.jsonl"]).data
    assert (one.train_files, one.train_weights) == (["a.jsonl"], None)
    union = load_config(None, ["data.train=[a.jsonl, b.parquet]"]).data
    assert (union.train_files, union.train_weights) == (["a.jsonl", "b.parquet"], None)
    mixture = load_config(None, ["data.train=[{path: a.jsonl, weight: 3}, {path: b.jsonl}]"]).data
    assert mixture.train == [DataSource("a.jsonl", 3.0), DataSource("b.jsonl", 1.0)]
    assert (mixture.train_files, mixture.train_weights) == (["a.jsonl", "b.jsonl"], [3.0, 1.0])
    with pytest.raises(ConfigError) as info:
        load_config(None, ["data.train=[{path: a.jsonl, weight: 0}, b.jsonl, b.jsonl, c.csv, '']"])
    assert info.value.problems == [
        "data.train: mixes plain files and {path, weight} entries; give every file a weight, or none",
        "data.train[3]: 'c.csv' must be a .jsonl or .parquet file",
        "data.train[0].weight: 0.0; need a weight > 0 (remove the file to skip it)",
        "data.train[2]: 'b.jsonl' is listed twice",
        "data.train[4]: no file; give a .jsonl or .parquet path",
    ]


def mixture(tmp_path, sizes=(6, 3)):
    paths = [write_jsonl(tmp_path / f"s{k}.jsonl", [{"prompt": f"q{i}", "task": "text", "uid": f"s{k}-{i}"}
                                                     for i in range(n)]) for k, n in enumerate(sizes)]
    return PromptDataset(paths)


def test_a_union_of_files_draws_each_record_once_per_epoch(tmp_path):
    stream = PromptStream(mixture(tmp_path), seed=5)
    drawn = [r.uid for r in stream.next_batch(9)]
    assert sorted(drawn) == sorted([f"s0-{i}" for i in range(6)] + [f"s1-{i}" for i in range(3)])
    assert (stream.epoch, stream.position) == (1, 0)


def test_a_mixture_draws_by_weight_each_file_once_per_its_epoch(tmp_path):
    import hashlib

    data = mixture(tmp_path)
    stream = PromptStream(data, seed=5, weights=[3.0, 1.0])
    drawn = [r.uid for r in stream.next_batch(400)]
    # the source of draw n, worked out from the rule: u = blake2b(seed, n) / 2^64 against 3/4
    expected = ["s0" if int.from_bytes(hashlib.blake2b(f"5\0mixture\0{n}".encode(), digest_size=8).digest(), "big")
                / 2**64 < 0.75 else "s1" for n in range(400)]
    assert [uid.split("-")[0] for uid in drawn] == expected
    assert 0.70 < expected.count("s0") / 400 < 0.80
    for source, size in (("s0", 6), ("s1", 3)):  # within a file, every record once per epoch of that file
        mine = [uid for uid in drawn if uid.startswith(source)]
        for epoch in range(len(mine) // size):
            assert sorted(mine[epoch * size:(epoch + 1) * size]) == sorted(f"{source}-{i}" for i in range(size))
    with pytest.raises(ValueError, match=r"weights \[1.0\]: need one weight > 0 per data file \(2: "):
        PromptStream(data, weights=[1.0])


@pytest.mark.parametrize("consumed", [1, 7, 23])
def test_a_mixture_cursor_resumes_exactly(tmp_path, consumed):
    data = mixture(tmp_path)
    reference = PromptStream(data, seed=2, weights=[1.0, 2.0])
    expected = [r.uid for r in reference.next_batch(consumed)], [r.uid for r in reference.next_batch(20)]
    first = PromptStream(data, seed=2, weights=[1.0, 2.0])
    assert [r.uid for r in first.next_batch(consumed)] == expected[0]
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint stores
    resumed = PromptStream(data, seed=2, weights=[1.0, 2.0])
    resumed.load_state_dict(state)
    assert [r.uid for r in resumed.next_batch(20)] == expected[1]
    assert resumed.state_dict() == reference.state_dict()
    with pytest.raises(DataError, match=r"saved weights=\[1.0, 2.0\] but the current data has weights=\[2.0, 1.0\]"):
        PromptStream(data, seed=2, weights=[2.0, 1.0]).load_state_dict(state)
    with pytest.raises(DataError, match="s1.jsonl: epoch=0, position=3 is outside 0 <= position < 3"):
        PromptStream(data, seed=2, weights=[1.0, 2.0]).load_state_dict({**state, "cursors": [[0, 0], [0, 3]]})


def test_a_mixture_file_left_without_rows_is_refused(tmp_path):
    data = mixture(tmp_path)
    data.records = [r for r in data.records if r.uid.startswith("s0")]  # as check_prompts may leave it
    with pytest.raises(DataError, match=r"mixture: no usable rows left in .*s1.jsonl, which has weight > 0"):
        PromptStream(data, weights=[1.0, 1.0])


def test_the_jobs_read_fields_and_mixtures_from_the_config(tmp_path):
    """The training driver's load (jobs/train_parts.py: load_data) and the held-out reader (jobs/heldout.py) take
    `data.fields`; the driver's stream is the mixture of `data.train`."""
    from jobs.config import load_config
    from jobs.heldout import heldout_records
    from jobs.train_parts import load_data, policy_parts

    files = [write_jsonl(tmp_path / f"{name}.jsonl", [{"question": f"Compute {i} + 1.", "gold": i + 1, "uid": f"{name}{i}"}
                                                       for i in range(3)]) for name in ("a", "b")]
    cfg = load_config(None, [f"data.train=[{{path: {files[0]}, weight: 1}}, {{path: {files[1]}, weight: 3}}]",
                             f"data.eval={files[1]}", "data.fields={prompt: question, answer: gold}", "model.path=tiny"])
    policy = policy_parts(cfg)
    stream, records = load_data(cfg, policy.config, policy.tokenizer)
    assert [(r.uid, r.prompt, r.answer) for r in records[:2]] == [("a0", "Compute 0 + 1.", "1"), ("a1", "Compute 1 + 1.", "2")]
    assert stream.weights == [1.0, 3.0]
    assert [r.uid[0] for r in stream.next_batch(12)] == ["ab"[stream.source_of_draw(n)] for n in range(12)]
    heldout, skipped = heldout_records(cfg)
    assert [r.prompt for r in heldout] == [f"Compute {i} + 1." for i in range(3)] and skipped == []

