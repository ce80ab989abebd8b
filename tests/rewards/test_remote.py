"""`remote` against a real HTTP server on 127.0.0.1 (see conftest.ScoringHandler for its endpoints)."""

from __future__ import annotations

import json
import pickle
import socket
import time

import pytest

import rewards
from rewards import Sample, Scored

from .conftest import BASIC_PASSWORD, BASIC_USER

SAMPLES = [
    Sample("text", "2+2?", "it is 4", "4", meta={"row": 1}),
    Sample("text", "3+3?", "it is 7", "6"),
    Sample("text", "free form", "whatever", None),
]


def test_batch_mode_scores_and_reasons(http_server):
    reward = rewards.get("remote", url=http_server.base_url + "/score")
    # expected by hand: "4" in "it is 4" -> 1.0; "6" not in "it is 7" -> 0.0; no answer -> null with a reason
    assert reward.score_detailed(SAMPLES) == [
        Scored(1.0), Scored(0.0), Scored(None, "remote: no answer to compare with")]
    assert reward(SAMPLES) == [1.0, 0.0, None]
    path, headers, raw = http_server.requests[-1]
    sent = json.loads(raw)
    assert path == "/score" and headers["Content-Type"] == "application/json"
    assert sent["samples"][0] == {"task": "text", "prompt": "2+2?", "response": "it is 4", "answer": "4",
                                  "meta": {"row": 1}}
    assert reward([]) == []


def test_slow_server_times_out_to_none_with_reason(http_server):
    reward = rewards.get("remote", url=http_server.base_url + "/slow", timeout_s=0.3, max_retries=1, backoff_s=0.05)
    started = time.monotonic()
    scored = reward.score_detailed(SAMPLES[:2])
    elapsed = time.monotonic() - started
    assert [s.value for s in scored] == [None, None]
    assert scored[0].category == "timeout"
    assert f"POST {http_server.base_url}/slow timed out after 0.3 s (2 attempts)" in scored[0].reason
    assert elapsed < 2 * 0.3 + 0.05 + 1.0


def test_time_budget_stops_retries(http_server):
    reward = rewards.get("remote", url=http_server.base_url + "/slow", timeout_s=5.0, max_retries=5, backoff_s=0.1)
    started = time.monotonic()
    scored = reward.score_detailed(SAMPLES[:1], timeout_s=0.5)
    assert time.monotonic() - started < 0.5 + 1.0
    assert scored[0].value is None and scored[0].category == "timeout"


def test_failing_server_is_retried_then_none_naming_url_and_status(http_server):
    before = http_server.hits["/fail"]
    reward = rewards.get("remote", url=http_server.base_url + "/fail", max_retries=2, backoff_s=0.01)
    scored = reward.score_detailed(SAMPLES)
    assert http_server.hits["/fail"] - before == 3  # 1 try + 2 retries
    assert all(s.value is None for s in scored)
    assert scored[0].reason == (f"error: POST {http_server.base_url}/fail returned HTTP 500: "
                                "internal error: scorer crashed (3 attempts)")


def test_transient_failure_is_retried_to_success(http_server):
    before = http_server.hits["/flaky"]
    reward = rewards.get("remote", url=http_server.base_url + "/flaky", max_retries=1, backoff_s=0.01)
    assert reward(SAMPLES) == [1.0, 0.0, None]
    assert http_server.hits["/flaky"] - before == 2


def test_client_errors_are_not_retried(http_server):
    before = http_server.hits["/notfound"]
    reward = rewards.get("remote", url=http_server.base_url + "/notfound", max_retries=3, backoff_s=0.01)
    scored = reward.score_detailed(SAMPLES[:1])
    assert http_server.hits["/notfound"] - before == 1
    assert scored[0].reason == f"error: POST {http_server.base_url}/notfound returned HTTP 404: no such endpoint"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/malformed", "returned malformed JSON (JSONDecodeError"),
        ("/wronglen", "returned 3 scores for 2 samples"),
        ("/badscore", "scores[0] is 'high'; expected a number or null"),
    ],
)
def test_malformed_responses_are_clear_errors(http_server, path, expected):
    reward = rewards.get("remote", url=http_server.base_url + path, max_retries=2, backoff_s=0.01)
    before = http_server.hits[path]
    scored = reward.score_detailed(SAMPLES[:2])
    assert all(s.value is None and s.category == "error" for s in scored)
    assert f"POST {http_server.base_url}{path}" in scored[0].reason and expected in scored[0].reason
    assert http_server.hits[path] - before == 1  # not retried


def test_connection_refused_names_the_url():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    reward = rewards.get("remote", url=f"http://127.0.0.1:{port}/score", max_retries=1, backoff_s=0.01)
    scored = reward.score_detailed(SAMPLES[:1])
    assert scored[0].value is None and scored[0].category == "error"
    assert f"POST http://127.0.0.1:{port}/score failed:" in scored[0].reason and "(2 attempts)" in scored[0].reason


def test_judge_mode(http_server, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "secret-token")
    reward = rewards.get(
        "remote", url=http_server.base_url + "/v1/chat/completions", mode="judge", model="judge-model",
        judge_prompt="Task {task}: {prompt}\nGold: {answer}\nAnswer: {response}\nGive 'Score: n'.",
        api_key_env="JUDGE_KEY",
    )
    samples = [Sample("text", "q1", "a correct answer", "x"), Sample("text", "q2", "a weak answer"),
               Sample("text", "q3", "garble")]
    scored = reward.score_detailed(samples)
    assert [s.value for s in scored] == [7.0, 2.0, None]
    assert scored[2].category == "unparseable_judgement" and "I cannot decide" in scored[2].reason
    judge_requests = [(h, json.loads(raw)) for p, h, raw in http_server.requests if p == "/v1/chat/completions"]
    by_prompt = {body["messages"][0]["content"]: (headers, body) for headers, body in judge_requests[-3:]}
    headers, body = by_prompt["Task text: q1\nGold: x\nAnswer: a correct answer\nGive 'Score: n'."]
    assert body["model"] == "judge-model" and body["temperature"] == 0.0 and body["max_tokens"] == 256
    assert headers["Authorization"] == "Bearer secret-token"
    assert "Task text: q2\nGold: \nAnswer: a weak answer\nGive 'Score: n'." in by_prompt  # missing answer -> ""


def test_judge_mode_custom_parser_and_bad_replies(http_server):
    url = http_server.base_url + "/v1/chat/completions"
    reward = rewards.get("remote", url=url, mode="judge", score_pattern=r"Score: \d")
    assert reward([Sample("text", "q", "correct")]) == [None]  # whole match "Score: 7" is not a number
    reward = rewards.get("remote", url=url, mode="judge", score_pattern=r"(?<=Score: )\d+")
    assert reward([Sample("text", "q", "correct")]) == [7.0]  # no group: the whole match
    empty = rewards.get("remote", url=http_server.base_url + "/judge_empty", mode="judge")
    scored = empty.score_detailed([Sample("text", "q", "r")])
    assert scored[0].value is None and "expected choices[0].message.content" in scored[0].reason


def test_judge_rubric_file_and_score_range(http_server, tmp_path):
    rubric = tmp_path / "rubric.txt"
    rubric.write_text("Grade {{strictly}} from 0 to 5.\nQ: {prompt}\nA: {response}\nEnd with 'Score: n'.\n")
    reward = rewards.get("remote", url=http_server.base_url + "/v1/chat/completions", mode="judge",
                         judge_prompt_file=str(rubric), score_range=[0, 5])
    samples = [Sample("text", "q1", "a weak answer"), Sample("text", "q2", "correct, says the response"),
               Sample("text", "q3", "garble")]
    scored = reward.score_detailed(samples)
    # the stand-in judge: "Score: 2" (-> 2 / 5), "Score: 7" when the prompt holds "correct" (outside [0, 5]),
    # no score at all for "garble"
    assert scored[0] == Scored(0.4)
    assert scored[1] == Scored(None, "out_of_range: judge score 7 is outside score_range [0, 5]")
    assert scored[2].value is None and scored[2].category == "unparseable_judgement"
    sent = [json.loads(raw)["messages"][0]["content"] for path, _, raw in http_server.requests[-3:]]
    assert "Grade {strictly} from 0 to 5.\nQ: q1\nA: a weak answer\nEnd with 'Score: n'.\n" in sent
    shifted = rewards.get("remote", url=http_server.base_url + "/v1/chat/completions", mode="judge",
                          judge_prompt="{response}", score_range=[-10, 10])
    assert shifted([Sample("text", "q", "correct")]) == [(7 + 10) / 20]


def test_judge_server_terms_are_checked_and_filled():
    from rewards.config import RewardsConfig, RewardTermConfig
    from rewards.remote import judge_server_problems, serve_judge

    judge = RewardTermConfig("remote", 1.0, {"url": "judge_server", "mode": "judge", "score_range": [0, 10]})
    named = RewardTermConfig("remote", 1.0, {"url": "judge_server", "mode": "judge", "model": "mine"})
    config = RewardsConfig(tasks={"text": [RewardTermConfig("format", 0.5), judge], "other": [named]})
    assert judge_server_problems(config, served=True) == []
    filled = serve_judge(config, "http://127.0.0.1:8123", "org/judge-7b")
    assert filled.tasks["text"][0] == config.tasks["text"][0]
    assert filled.tasks["text"][1].options == {"url": "http://127.0.0.1:8123/v1/chat/completions", "mode": "judge",
                                               "score_range": [0, 10], "model": "org/judge-7b"}
    assert filled.tasks["other"][0].options["model"] == "mine"  # a model the term names is kept
    assert judge_server_problems(filled, served=False) == []

    assert judge_server_problems(config, served=False) == [
        f"rewards.tasks.{task}[{index}].options.url: judge_server needs reward_actors.judge_server (the model to "
        "serve and the python of its environment), which is null; set it, or give the endpoint's URL"
        for task, index in (("text", 1), ("other", 0))]
    batch = RewardsConfig(tasks={"text": [RewardTermConfig("remote", 1.0, {"url": "judge_server"})]})
    assert judge_server_problems(batch, served=True) == [
        "rewards.tasks.text[0]: url judge_server is a chat endpoint for the remote reward in judge mode; "
        "got name 'remote', mode 'batch'"]
    unused = RewardsConfig(tasks={"text": [RewardTermConfig("format", 0.5)]})
    assert judge_server_problems(unused, served=True) == [
        "reward_actors.judge_server: set, but no term of rewards.tasks has options.url: judge_server; point a "
        "remote judge term at it, or set reward_actors.judge_server to null"]
    assert judge_server_problems(unused, served=False) == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"url": "ftp://host/x"}, "url: got 'ftp://host/x'"),
        ({"url": "http://h/x", "mode": "chat"}, "mode: got 'chat'"),
        ({"url": "http://h/x", "timeout_s": 0}, "expected timeout_s > 0"),
        ({"url": "http://h/x", "max_retries": -1}, "max_retries >= 0"),
        ({"url": "http://h/x", "mode": "judge", "judge_prompt": "{question} {response}"},
         r"judge_prompt: KeyError: 'question'"),
        ({"url": "http://h/x", "mode": "judge", "judge_prompt": "rate {prompt}"}, r"must contain \{response\}"),
        ({"url": "http://h/x", "mode": "judge", "score_pattern": "("}, "score_pattern: '\\(' is not a valid regex"),
        ({"url": "http://h/x", "judge_prompt": "{response}", "score_range": [0, 10]},
         "judge_prompt, score_range: judge-mode option\\(s\\), but mode is 'batch'"),
        ({"url": "http://h/x", "mode": "judge", "judge_prompt": "{response}", "judge_prompt_file": "r.txt"},
         "judge_prompt and judge_prompt_file are both set"),
        ({"url": "http://h/x", "mode": "judge", "judge_prompt_file": "/nonexistent/rubric.txt"},
         "judge_prompt_file /nonexistent/rubric.txt: cannot be read \\(FileNotFoundError"),
        ({"url": "http://h/x", "mode": "judge", "score_range": [10, 0]}, r"score_range: got \[10, 0\]; expected finite"),
        ({"url": "http://h/x", "mode": "judge", "score_range": [0]}, r"score_range: got \[0\]; expected \[low, high\]"),
        ({"url": "judge_server", "mode": "judge"}, "url: 'judge_server' stands for the server reward_actors"),
        ({"url": "http://h/x", "api_key_env": "UNIGRPO_SURELY_UNSET_VAR"}, "UNIGRPO_SURELY_UNSET_VAR' is not set"),
    ],
)
def test_bad_options_raise_at_construction(options, message):
    with pytest.raises(ValueError, match=message):
        rewards.get("remote", **options)


def test_redirects_are_never_followed(http_server, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "secret-token")
    other = http_server.other
    before = other.hits["GET /score"] + other.hits["/score"]
    reward = rewards.get("remote", url=http_server.base_url + "/redirect", api_key_env="JUDGE_KEY", max_retries=2,
                         backoff_s=0.01)
    scored = reward.score_detailed(SAMPLES[:2])
    assert other.hits["GET /score"] + other.hits["/score"] == before, "the key went to the redirect's host"
    assert [s.value for s in scored] == [None, None]  # not the 9.0s the other host hands out
    assert scored[0].reason == (
        f"error: POST {http_server.base_url}/redirect returned HTTP 302, a redirect to {other.base_url}/score; "
        "redirects are never followed (the request carries credentials): set url to the final endpoint")


def test_an_echoed_key_is_redacted(http_server, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "secret-token")
    for mode, path in (("batch", "/echo_auth"), ("judge", "/echo_auth")):
        reward = rewards.get("remote", url=http_server.base_url + path, mode=mode, api_key_env="JUDGE_KEY")
        scored = reward.score_detailed(SAMPLES[:1])
        assert scored[0].reason == (f"error: POST {http_server.base_url}/echo_auth returned HTTP 401: "
                                    "unauthorized: you sent Bearer <redacted>")
    assert http_server.requests[-1][1]["Authorization"] == "Bearer secret-token"  # it was sent, to this URL


def test_url_userinfo_is_basic_auth_and_never_shown(http_server):
    host = http_server.base_url.removeprefix("http://")
    quoted = "pa%3Ass%2Fw%40rd"  # BASIC_PASSWORD, percent-encoded as a URL requires
    reward = rewards.get("remote", url=f"http://{BASIC_USER}:{quoted}@{host}/basic")
    assert reward(SAMPLES) == [1.0, 0.0, None]  # the server accepted alice's credentials
    assert reward.url == f"{http_server.base_url}/basic"
    assert BASIC_PASSWORD not in repr(reward) and quoted not in repr(reward)
    copy = pickle.loads(pickle.dumps(reward))  # workers get the credentials too
    assert copy(SAMPLES) == [1.0, 0.0, None]

    wrong = rewards.get("remote", url=f"http://{BASIC_USER}:wrong-pass@{host}/basic")
    reason = wrong.score_detailed(SAMPLES[:1])[0].reason
    assert reason == f"error: POST {http_server.base_url}/basic returned HTTP 401: unauthorized: you sent Basic <redacted>"
    with pytest.raises(ValueError, match="user:password@ and api_key_env") as caught:
        rewards.get("remote", url=f"http://{BASIC_USER}:{quoted}@{host}/basic", api_key_env="PATH")
    with pytest.raises(ValueError, match="url: got 'ftp://h/x'") as caught:
        rewards.get("remote", url=f"ftp://{BASIC_USER}:{quoted}@h/x")
    assert quoted not in str(caught.value)


def test_pickles(http_server):
    reward = rewards.get("remote", url=http_server.base_url + "/score")
    assert pickle.loads(pickle.dumps(reward))(SAMPLES) == [1.0, 0.0, None]
    judge = rewards.get("remote", url=http_server.base_url + "/v1/chat/completions", mode="judge",
                        score_pattern=r"Score: (\d+)", score_range=[0, 10])
    copy = pickle.loads(pickle.dumps(judge))
    # the default rubric asks about "correctness", so the stand-in judge answers "Score: 7": 7 / 10
    assert copy(SAMPLES[:1]) == [0.7] and copy._score_regex.pattern == r"Score: (\d+)"
