"""The judge server's actor with a stand-in OpenAI-compatible server (a stdlib script on 127.0.0.1 that this test
writes and the actor launches with `python:` = this interpreter): start, health, scores through the `remote` judge,
restart after a kill, stop (its process group gone), the error paths, the config section and the resource check."""

from __future__ import annotations

import os
import re
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from actors.cluster import ResourceError, check_resources, learner_role
from actors.config import JudgeServerConfig, LearnerConfig, RewardActorsConfig
from actors.judge_server import (
    JudgedScorer,
    JudgeServer,
    JudgeServerError,
    JudgeServerProcess,
    judge_server_roles,
    server_command,
)
from rewards import RewardService, Sample
from rewards.config import RewardsConfig, RewardTermConfig
from rewards.remote import serve_judge
from tests.jobs.test_rollout_job import gone
from tests.rewards.batches import batch_of

REPO = Path(__file__).resolve().parents[2]

STAND_IN = textwrap.dedent('''
    """A stand-in for `vllm serve`: GET /health, POST /v1/chat/completions; starts a child, as vLLM starts engines."""
    import json, os, subprocess, sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    host, port, pid_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(pid_file, "w") as out:
        out.write(f"{os.getpid()} {engine.pid}")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send(200 if self.path == "/health" else 404, "")

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            content = body["messages"][0]["content"]
            verdict = "I cannot decide." if "garble" in content else "Score: 8" if "correct" in content else "Score: 3"
            reply = {"choices": [{"message": {"role": "assistant", "content": f"As {body['model']}: {verdict}"}}]}
            self.send(200, json.dumps(reply))

        def send(self, status, text):
            data = text.encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    print("stand-in judge ready", flush=True)
    ThreadingHTTPServer((host, port), Handler).serve_forever()
''')

SAMPLES = [Sample("text", "q1", "a correct answer"), Sample("text", "q2", "a weak answer"),
           Sample("text", "q3", "garble")]


def stand_in(tmp_path: Path, **fields) -> tuple[JudgeServerConfig, Path]:
    """The section for the stand-in server, and the file where it writes '<its pid> <its child's pid>'."""
    script, pids = tmp_path / "stand_in_judge.py", tmp_path / "pids"
    script.write_text(STAND_IN)
    options = {"model": "stand-in/judge-1b", "python": sys.executable, "gpus": 0.0, "start_timeout_s": 30.0,
               "command": ("{python}", str(script), "{host}", "{port}", str(pids)), **fields}
    return JudgeServerConfig(**options), pids


def inline(tmp_path: Path, code: str, **fields) -> JudgeServerConfig:
    """A section whose command is `python -c code <host> <port> <tmp_path>/pid`."""
    return JudgeServerConfig(model="m", python=sys.executable, gpus=0.0, **fields,
                             command=("{python}", "-c", code, "{host}", "{port}", str(tmp_path / "pid")))


def read_pids(path: Path, old: tuple[int, int] | None = None, timeout_s: float = 20.0) -> tuple[int, int]:
    """The (server, child) pids the stand-in wrote, once they differ from `old`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if len(text.split()) == 2 and tuple(map(int, text.split())) != old:
            return tuple(map(int, text.split()))
        time.sleep(0.05)
    raise AssertionError(f"no new pids in {path} within {timeout_s} s")


def actor_of(cfg: JudgeServerConfig, port: int, tmp_path: Path) -> JudgeServerProcess:
    """The actor's class in this process, for `cfg`, as `JudgeServer` builds it in its actor."""
    return JudgeServerProcess(server_command(cfg, port), port, str(tmp_path / "log"),
                              start_timeout_s=cfg.start_timeout_s, max_restarts=cfg.max_restarts)


def judge_term(**options) -> RewardsConfig:
    return RewardsConfig(tasks={"text": [RewardTermConfig("remote", 1.0, {
        "url": "judge_server", "mode": "judge", "score_range": [0, 10], "max_retries": 0, **options})]})


def test_serves_scores_restarts_and_stops(ray_session, tmp_path, socket_watch):
    cfg, pid_file = stand_in(tmp_path, max_restarts=1)
    server = JudgeServer(cfg, tmp_path)
    try:
        server.ready()
        first = read_pids(pid_file)
        assert server.url == f"http://127.0.0.1:{server.port}"
        scorer = JudgedScorer(RewardService(serve_judge(judge_term(), server.url, cfg.model)), server)
        batch, _ = scorer.score(batch_of(SAMPLES))
        # the stand-in: "Score: 8" when the rubric holds "correct" (the default rubric asks about correctness, so
        # always, but for "garble": no score at all); 8 on [0, 10] -> 0.8
        assert batch.rewards["remote"] == [0.8, 0.8, None]
        assert batch.reward_reasons["remote"][2].startswith("unparseable_judgement: no match")
        assert "As stand-in/judge-1b: I cannot decide." in batch.reward_reasons["remote"][2]  # the served model
        assert scorer.health_metrics() == {"health/judge_server_restarts": 0.0}
        assert ("127.0.0.1", server.port) in socket_watch.seen and socket_watch.wildcard() == {}

        os.kill(first[0], signal.SIGKILL)  # the server dies; its child lives on until the actor reaps the group
        second = read_pids(pid_file, old=first)
        assert gone(first[1]), "the dead server's child was left running"
        rubric = "Rate {response}; end with Score: n"
        scorer = JudgedScorer(RewardService(serve_judge(judge_term(judge_prompt=rubric), server.url, cfg.model)),
                              server)
        batch, _ = scorer.score(batch_of(SAMPLES[1:2]))  # waits for the restart in progress
        assert batch.rewards["remote"] == [0.3]  # "Score: 3" for a rubric without "correct": 3 / 10
        assert scorer.health_metrics() == {"health/judge_server_restarts": 1.0}
    finally:
        server.stop()
    assert gone(second[0]) and gone(second[1])
    assert "stand-in judge ready" in (tmp_path / "judge_server.log").read_text()


def test_a_killed_actor_takes_its_server_along(ray_session, tmp_path):
    import ray

    cfg, pid_file = stand_in(tmp_path)
    server = JudgeServer(cfg, tmp_path)
    try:
        server.ready()
        leader, child = read_pids(pid_file)
        ray.kill(server.actors[0], no_restart=True)  # as when the driver dies: no stop() runs in the actor
        assert gone(leader) and gone(child), "the server outlived its actor"
        with pytest.raises(JudgeServerError, match="judge server actor: status failed"):
            server.check()
    finally:
        server.stop()


def test_a_command_that_exits_at_once_is_an_error_with_its_log(ray_session, tmp_path):
    code = "import sys; print('loading'); sys.stderr.write('ValueError: no model named m\\n'); sys.exit(3)"
    server = JudgeServer(inline(tmp_path, code), tmp_path)
    try:
        with pytest.raises(JudgeServerError, match="judge server exited with status 3 before it was ready") as caught:
            server.ready()
    finally:
        server.stop()
    assert "loading\nValueError: no model named m" in str(caught.value)
    assert f"the end of {tmp_path / 'judge_server.log'}" in str(caught.value)


def test_a_server_that_never_gets_ready_is_stopped_with_an_error(tmp_path):
    code = "import os, sys, time; open(sys.argv[3], 'w').write(str(os.getpid())); print('warming up'); time.sleep(60)"
    process = actor_of(inline(tmp_path, code, start_timeout_s=1.0), 1, tmp_path)
    with pytest.raises(JudgeServerError) as caught:
        process.start()
    assert str(caught.value).startswith("judge server not ready within reward_actors.judge_server.start_timeout_s=1 s "
                                        "(GET http://127.0.0.1:1/health never answered 200)")
    assert str(caught.value).endswith("warming up\n")
    assert gone(int((tmp_path / "pid").read_text()), within_s=1.0)


def test_restarts_are_bounded_and_a_missing_interpreter_is_named(tmp_path):
    cfg, pid_file = stand_in(tmp_path, max_restarts=0)
    from actors.judge_server import free_port

    process = actor_of(cfg, free_port(), tmp_path)
    try:
        process.start()
        leader, child = read_pids(pid_file)
        os.kill(leader, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while process.status()["failure"] is None and time.monotonic() < deadline:
            time.sleep(0.05)
        failure = process.status()["failure"]
        assert failure.startswith("judge server exited with status -9, and reward_actors.judge_server.max_restarts=0 "
                                  "restart(s) are spent; the end of")
        assert gone(child) and process.status() == {"pid": None, "restarts": 0, "failure": failure}
    finally:
        process.stop()

    missing = actor_of(JudgeServerConfig(model="m", python="/nonexistent/bin/python"), 1, tmp_path)
    with pytest.raises(JudgeServerError, match=r"command: cannot run '/nonexistent/bin/python' \(FileNotFoundError"):
        missing.start()


def test_the_server_counts_in_the_resource_check():
    cfg = RewardActorsConfig(judge_server=JudgeServerConfig(model="m", python="p", cpus=2.0, gpus=1.0))
    (role,) = judge_server_roles(cfg)
    assert (role.count, role.cpus, role.gpus) == (1, 2.0, 1.0)
    assert judge_server_roles(RewardActorsConfig()) == []
    roles = [learner_role(LearnerConfig(num_ranks=2, cpus_per_rank=1.0)), role]
    with pytest.raises(ResourceError, match=r"reward_actors.judge_server.gpus=1: each judge server actor needs 1 GPU"):
        check_resources(roles, [{"CPU": 8.0, "GPU": 0.0}])
    with pytest.raises(ResourceError, match=r"learner.num_ranks × learner.cpus_per_rank = 2 × 1 \+ "
                                            r"reward_actors.judge_server × reward_actors.judge_server.cpus = 1 × 2: "
                                            r"4 CPU requested but the cluster has 3"):
        check_resources(roles, [{"CPU": 3.0, "GPU": 1.0}])
    check_resources(roles, [{"CPU": 4.0, "GPU": 1.0}])


@pytest.mark.parametrize(("fields", "message"), [
    ({"model": " "}, "model: empty; name the judge model"),
    ({"python": ""}, "python: empty; give the Python interpreter of vLLM's environment"),
    ({"command": ()}, "command: empty"),
    ({"command": ("{python}", "{modle}", "{host}", "{port}")}, r"command\[1\]: '\{modle\}' \(KeyError: 'modle'\)"),
    ({"command": ("serve", "--port", "{port}")}, r"has no \{host\}; the server must listen where the actor looks"),
    ({"cpus": 0}, "cpus: 0; the server's actor needs > 0 CPU"),
    ({"gpus": 1.5}, "gpus: 1.5; use 0"),
    ({"start_timeout_s": float("inf")}, "start_timeout_s: inf; expected a finite number of seconds > 0"),
    ({"max_restarts": -1}, "max_restarts: -1; use 0"),
])
def test_bad_sections_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        JudgeServerConfig(**{"model": "m", "python": "p", **fields})


@pytest.mark.parametrize(("overrides", "message"), [
    (["reward_actors.judge_server={model: m, python: p, gpus: 0}"],
     "reward_actors.judge_server: set, but no term of rewards.tasks has options.url: judge_server"),
    (["rewards.tasks.text=[{name: remote, options: {url: judge_server, mode: judge}}]"],
     "rewards.tasks.text[0].options.url: judge_server needs reward_actors.judge_server"),
])
def test_terms_and_server_that_do_not_fit_are_refused_at_config_load(overrides, message):
    from jobs.config import load_config
    from jobs.configtree import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(REPO / "tests/jobs/configs/tiny_lengths.yaml", overrides)


def test_jobs_train_counts_the_server_in_the_resource_check_before_any_actor_starts(tmp_path, monkeypatch):
    import contextlib

    from jobs.config import load_config
    from jobs.train_parts import start_actors

    monkeypatch.chdir(REPO)  # the config's paths are relative to the repository
    cfg = load_config("tests/jobs/configs/tiny_lengths.yaml", [
        f"run.output_dir={tmp_path}", "rewards.tasks.text=[{name: remote, options: {url: judge_server, mode: judge}}]",
        "reward_actors.judge_server={model: m, python: p, gpus: 0}"])
    message = ("+ reward_actors.judge_server × reward_actors.judge_server.cpus = 1 × 1: 5 CPU requested but the "
               "cluster has 4")  # 2 ranks + 2 workers + the server
    with contextlib.ExitStack() as cleanup, pytest.raises(ResourceError, match=re.escape(message)):
        start_actors(cfg, ["text"], None, cleanup)  # no network source: nothing past the checks may run
