"""`python -m jobs.bench sampler --lora RANK` runs and reports what it claims (timings are never asserted)."""

from __future__ import annotations

import json

import pytest

from jobs.bench.__main__ import main as bench_main


def test_lora_bench_compares_unmerged_and_merged_and_counts_the_sync_bytes(tmp_path):
    out = tmp_path / "lora.json"
    assert bench_main(["sampler", "--lora", "2", "--sizes", "tiny", "--temperatures", "0", "--batch", "2",
                       "--gen-length", "16", "--steps", "8", "--block-length", "8", "--repeats", "1",
                       "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    (row,) = results["lora"]
    assert row["size"] == "tiny" and row["rank"] == 2
    assert row["unmerged_s"] > 0 and row["merged_s"] > 0 and row["remerge_s"] > 0
    assert row["merged_speedup"] == pytest.approx(row["unmerged_s"] / row["merged_s"])
    # tiny twin: 2 blocks, d_model 64, mlp 128, fp32: 4 x 2 x (64 + 64) + 3 x 2 x (64 + 128) values per block
    assert row["adapter_sync_bytes"] == 2 * (4 * 2 * 128 + 3 * 2 * 192) * 4
    big = results["llada_8b_sync"]  # rank 2: 32 x (4 x 2 x 8192 + 3 x 2 x 16384) values, bf16
    assert big["adapter_sync_bytes"] == 32 * (4 * 2 * 8192 + 3 * 2 * 16384) * 2
    assert big["full_sync_bytes"] == 8_015_581_184 * 2


def test_lora_rank_must_be_positive(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_main(["sampler", "--lora", "0", "--sizes", "tiny"])
    assert exit_info.value.code == 2
    assert "--lora: got 0; the adapter rank must be >= 1" in capsys.readouterr().err
