"""`remote`: scores from an HTTP service — a batch scoring endpoint, or an OpenAI-style chat model as a judge.

A reward behind a network call, for scorers that live outside the training processes (a scoring service of your
own, an LLM judge on its own server). A sample the service cannot score is None with a reason, never 0; a call
never raises. The batch protocol, failures and secrets: docs/custom_rewards.md §8; the judge options, a worked
judge config and the judge server jobs.train can run: docs/custom_rewards.md §6.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Literal

from rewards.base import Sample, Scored, unscorable
from rewards.config import RewardsConfig
from rewards.deadline import short_exception
from rewards.registry import register
from rewards.secrets import redact, without_userinfo

DEFAULT_JUDGE_PROMPT = (
    "You are grading a response to a task.\n\n"
    "Task:\n{prompt}\n\n"
    "Reference answer (may be empty):\n{answer}\n\n"
    "Response:\n{response}\n\n"
    "Rate the response from 0 to 10 for correctness and quality. "
    'End your reply with a line of the form "Score: <number>".'
)
DEFAULT_SCORE_PATTERN = r"(?i)score\s*[:=]\s*(-?\d+(?:\.\d+)?)"
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
_TEMPLATE_FIELDS = ("prompt", "response", "answer", "task")
JUDGE_SERVER = "judge_server"
"""The `url` of a judge term that asks for the server of `reward_actors.judge_server` (filled by `serve_judge`)."""
CHAT_PATH = "/v1/chat/completions"
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class RemoteError(Exception):
    """A request that failed for good; `category` is `timeout` or `error`."""

    def __init__(self, category: str, message: str):
        super().__init__(message)
        self.category = category


@register("remote")
class RemoteReward:
    """Scores from an HTTP endpoint (see the module docstring for both protocols)."""

    isolation = "thread"  # I/O bound and bounded by its own timeouts

    def __init__(
        self,
        *,
        url: str,
        mode: Literal["batch", "judge"] = "batch",
        timeout_s: float = 30.0,
        max_retries: int = 2,
        backoff_s: float = 0.5,
        model: str | None = None,
        judge_prompt: str | None = None,
        judge_prompt_file: str | None = None,
        score_pattern: str | None = None,
        score_range: Sequence[float] | None = None,
        max_tokens: int = 256,
        max_concurrency: int = 8,
        api_key_env: str | None = None,
    ):
        if url == JUDGE_SERVER:
            raise ValueError(f"url: {JUDGE_SERVER!r} stands for the server reward_actors.judge_server runs, and "
                             "jobs.train puts that server's URL in its place; here give the endpoint's URL "
                             "(http://host:port/v1/chat/completions)")
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"url: got {without_userinfo(url)!r}; expected http://host:port/path or https://...")
        self._basic_auth = None if parsed.username is None else (
            urllib.parse.unquote(parsed.username), urllib.parse.unquote(parsed.password or ""))
        if self._basic_auth is not None and api_key_env is not None:
            raise ValueError("url has user:password@ and api_key_env is set: both would be the Authorization "
                             "header; give the credentials one way")
        url = without_userinfo(url)
        if mode not in ("batch", "judge"):
            raise ValueError(f"mode: got {mode!r}; expected 'batch' or 'judge'")
        judge_only = {"model": model, "judge_prompt": judge_prompt, "judge_prompt_file": judge_prompt_file,
                      "score_pattern": score_pattern, "score_range": score_range}
        if mode == "batch" and any(value is not None for value in judge_only.values()):
            given = ", ".join(key for key, value in judge_only.items() if value is not None)
            raise ValueError(f"{given}: judge-mode option(s), but mode is 'batch'; set mode: judge or remove them")
        if not timeout_s > 0 or backoff_s < 0 or max_retries < 0 or max_concurrency < 1 or max_tokens < 1:
            raise ValueError(
                f"timeout_s={timeout_s}, backoff_s={backoff_s}, max_retries={max_retries}, "
                f"max_concurrency={max_concurrency}, max_tokens={max_tokens}: expected timeout_s > 0, "
                "backoff_s >= 0, max_retries >= 0, max_concurrency >= 1, max_tokens >= 1"
            )
        judge_prompt = _judge_template(judge_prompt, judge_prompt_file)
        score_pattern = DEFAULT_SCORE_PATTERN if score_pattern is None else score_pattern
        try:
            self._score_regex = re.compile(score_pattern)
        except re.error as exc:
            raise ValueError(f"score_pattern: {score_pattern!r} is not a valid regex: {exc}") from exc
        if score_range is not None:
            low, high = _score_range(score_range)
            score_range = (low, high)
        if api_key_env is not None and not os.environ.get(api_key_env):
            raise ValueError(f"api_key_env: environment variable {api_key_env!r} is not set or empty")
        self.url, self.mode, self.timeout_s = url, mode, float(timeout_s)
        self.max_retries, self.backoff_s = int(max_retries), float(backoff_s)
        self.model, self.judge_prompt, self.score_pattern = model, judge_prompt, score_pattern
        self.score_range = score_range
        self.max_tokens, self.max_concurrency, self.api_key_env = int(max_tokens), int(max_concurrency), api_key_env

    # ------------------------------------------------------------------------------------------ contract
    def __call__(self, samples: list[Sample]) -> list[float | None]:
        return [scored.value for scored in self.score_detailed(samples)]

    def score_detailed(self, samples: Sequence[Sample], *, timeout_s: float | None = None) -> list[Scored]:
        """`timeout_s` bounds the whole call: retries stop and requests shorten as it runs out."""
        if not samples:
            return []
        deadline = time.monotonic() + timeout_s if timeout_s else None
        if self.mode == "batch":
            scored = self._score_batch(list(samples), deadline)
        else:
            with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(samples))) as executor:
                scored = list(executor.map(lambda s: self._judge_one(s, deadline), samples))
        return [Scored(s.value, self._redact(s.reason)) if s.reason else s for s in scored]

    # ------------------------------------------------------------------------------------------ batch mode
    def _score_batch(self, samples: list[Sample], deadline: float | None) -> list[Scored]:
        payload = {"samples": [
            {"task": s.task, "prompt": s.prompt, "response": s.response, "answer": s.answer,
             "meta": dict(s.meta) if s.meta is not None else None}
            for s in samples
        ]}
        try:
            body = self._post_json(payload, deadline)
            return self._parse_batch(body, len(samples))
        except RemoteError as exc:
            return unscorable(len(samples), f"{exc.category}: {exc}")

    def _parse_batch(self, body: Any, count: int) -> list[Scored]:
        where = f"POST {self.url}"
        if not isinstance(body, dict) or not isinstance(body.get("scores"), list):
            raise RemoteError("error", f'{where}: expected a JSON object {{"scores": [...]}}, got {_excerpt(body)}')
        scores, reasons = body["scores"], body.get("reasons")
        if len(scores) != count:
            raise RemoteError("error", f"{where}: returned {len(scores)} scores for {count} samples")
        if reasons is not None and (not isinstance(reasons, list) or len(reasons) != count):
            raise RemoteError("error", f'{where}: "reasons" must be a list of {count} strings or nulls')
        results = []
        for index, score in enumerate(scores):
            reason = reasons[index] if reasons is not None else None
            if score is None:
                results.append(Scored(None, f"remote: {reason}" if reason else "remote: the server returned null"))
            elif isinstance(score, bool) or not isinstance(score, (int, float)):
                raise RemoteError("error", f"{where}: scores[{index}] is {score!r}; expected a number or null")
            elif not math.isfinite(score):
                results.append(Scored(None, f"invalid: {where}: scores[{index}] is {score}"))
            else:
                results.append(Scored(float(score)))
        return results

    # ------------------------------------------------------------------------------------------ judge mode
    def _judge_one(self, sample: Sample, deadline: float | None) -> Scored:
        content = self.judge_prompt.format(
            prompt=sample.prompt, response=sample.response, answer=sample.answer or "", task=sample.task
        )
        payload: dict[str, Any] = {
            "messages": [{"role": "user", "content": content}], "temperature": 0.0, "max_tokens": self.max_tokens,
        }
        if self.model is not None:
            payload["model"] = self.model
        try:
            body = self._post_json(payload, deadline)
        except RemoteError as exc:
            return Scored(None, f"{exc.category}: {exc}")
        try:
            reply = body["choices"][0]["message"]["content"]
            if not isinstance(reply, str):
                raise TypeError(f"content is {type(reply).__name__}")
        except (KeyError, IndexError, TypeError) as exc:
            return Scored(None, f"error: POST {self.url}: expected choices[0].message.content in the reply "
                                f"({short_exception(exc)}), got {_excerpt(body)}")
        matches = list(self._score_regex.finditer(reply))
        if not matches:
            return Scored(None, f"unparseable_judgement: no match for {self.score_pattern!r} in {_excerpt(reply)}")
        last = matches[-1]
        text = last.group(1) if last.re.groups else last.group(0)
        try:
            value = float(text)
        except (TypeError, ValueError):
            return Scored(None, f"unparseable_judgement: {text!r} is not a number")
        if not math.isfinite(value):
            return Scored(None, f"invalid: judge score {text!r}")
        if self.score_range is None:
            return Scored(value)
        low, high = self.score_range
        if not low <= value <= high:
            return Scored(None, f"out_of_range: judge score {text} is outside score_range [{low:g}, {high:g}]")
        return Scored((value - low) / (high - low))

    # ------------------------------------------------------------------------------------------ transport
    def _post_json(self, payload: dict[str, Any], deadline: float | None) -> Any:
        """POST with retries; the decoded JSON body, or RemoteError naming URL, status and attempts."""
        data = json.dumps(payload, default=str).encode("utf-8")  # ensure_ascii: lone surrogates become \\udcxx
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key_env is not None:
            headers["Authorization"] = f"Bearer {os.environ.get(self.api_key_env, '')}"
        elif self._basic_auth is not None:
            headers["Authorization"] = f"Basic {_basic_token(*self._basic_auth)}"
        failure = RemoteError("error", f"POST {self.url}: no attempt made (time budget already spent)")
        for attempt in range(self.max_retries + 1):
            remaining = math.inf if deadline is None else deadline - time.monotonic()
            if remaining <= 0.05:
                break
            try:
                return self._post_once(data, headers, min(self.timeout_s, remaining))
            except _Retryable as exc:
                failure = RemoteError(exc.category, f"{exc} ({attempt + 1} attempt{'s' if attempt else ''})")
            pause = self.backoff_s * (2 ** attempt)
            if attempt < self.max_retries:
                if deadline is not None and time.monotonic() + pause >= deadline:
                    break
                time.sleep(pause)
        raise failure

    def _post_once(self, data: bytes, headers: dict[str, str], timeout_s: float) -> Any:
        request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        where = f"POST {self.url}"
        try:
            with self._opener().open(request, timeout=timeout_s) as response:
                raw = response.read(MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as exc:
            if 300 <= exc.code < 400:
                target = without_userinfo(exc.headers.get("Location") or "") or "nowhere"
                raise RemoteError("error", f"{where} returned HTTP {exc.code}, a redirect to {_excerpt(target)}; "
                                           "redirects are never followed (the request carries credentials): "
                                           "set url to the final endpoint") from exc
            body = _read_error_body(exc)
            message = f"{where} returned HTTP {exc.code}: {body}"
            if exc.code >= 500 or exc.code == 429:
                raise _Retryable("error", message) from exc
            raise RemoteError("error", message) from exc
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise _Retryable("timeout", f"{where} timed out after {timeout_s:.3g} s") from exc
            raise _Retryable("error", f"{where} failed: {exc.reason}") from exc
        except TimeoutError as exc:
            raise _Retryable("timeout", f"{where} timed out after {timeout_s:.3g} s") from exc
        except (ConnectionError, OSError) as exc:
            raise _Retryable("error", f"{where} failed: {short_exception(exc)}") from exc
        if len(raw) > MAX_RESPONSE_BYTES:
            raise RemoteError("error", f"{where}: response larger than {MAX_RESPONSE_BYTES} bytes")
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RemoteError("error", f"{where} returned malformed JSON ({short_exception(exc)}): "
                                       f"{_excerpt(raw.decode('utf-8', 'replace'))}") from exc

    def _opener(self) -> urllib.request.OpenerDirector:
        host = urllib.parse.urlparse(self.url).hostname or ""
        handlers: list[urllib.request.BaseHandler] = [_RefuseRedirects()]
        if host in _LOOPBACK_HOSTS:
            handlers.append(urllib.request.ProxyHandler({}))
        return urllib.request.build_opener(*handlers)

    def _redact(self, text: str) -> str:
        """`text` with the API key, the URL password and the Basic token redacted."""
        secrets = []
        if self.api_key_env is not None:
            secrets.append(os.environ.get(self.api_key_env, ""))
        if self._basic_auth is not None:
            user, password = self._basic_auth
            secrets += [_basic_token(user, password), password, urllib.parse.quote(password, safe="")]
        return redact(text, secrets)

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_score_regex"]
        return state

    def __setstate__(self, state) -> None:
        self.__dict__.update(state)
        self._score_regex = re.compile(self.score_pattern)

    def __repr__(self) -> str:
        return f"RemoteReward(url={self.url!r}, mode={self.mode!r})"


# ---------------------------------------------------------------------------------------------- options
def _judge_template(inline: str | None, path: str | None) -> str:
    """The judge prompt: `judge_prompt`, the text of `judge_prompt_file`, or the default; checked as a template."""
    if inline is not None and path is not None:
        raise ValueError("judge_prompt and judge_prompt_file are both set; give the rubric one way")
    template, where = DEFAULT_JUDGE_PROMPT if inline is None else inline, "judge_prompt"
    if path is not None:
        where = f"judge_prompt_file {os.path.abspath(path)}"
        try:
            template = open(path, encoding="utf-8").read()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{where}: cannot be read ({short_exception(exc)}); give a UTF-8 text file") from exc
    try:
        template.format(**dict.fromkeys(_TEMPLATE_FIELDS, ""))
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(
            f"{where}: {short_exception(exc)}; fields available: "
            f"{', '.join('{' + f + '}' for f in _TEMPLATE_FIELDS)} (double literal braces)"
        ) from exc
    if "{response}" not in template:
        raise ValueError(f"{where}: must contain {{response}}, otherwise the judge never sees the response")
    return template


def _score_range(score_range: Sequence[float]) -> tuple[float, float]:
    """`[low, high]` as two finite floats with low < high, else a ValueError naming the option."""
    try:
        low, high = (float(bound) for bound in score_range)
    except (TypeError, ValueError):
        raise ValueError(f"score_range: got {score_range!r}; expected [low, high], e.g. [0, 10]") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"score_range: got [{low:g}, {high:g}]; expected finite bounds with low < high")
    return low, high


def serve_judge(config: RewardsConfig, base_url: str, model: str) -> RewardsConfig:
    """`config` with every `url: judge_server` replaced by `<base_url>/v1/chat/completions`, and `model` (the name
    the server serves) added to those terms that name none."""
    tasks = {}
    for task, terms in config.tasks.items():
        tasks[task] = [replace(term, options={"model": model, **term.options, "url": base_url + CHAT_PATH})
                       if term.options.get("url") == JUDGE_SERVER else term for term in terms]
    return RewardsConfig(tasks=tasks)


def judge_server_problems(config: RewardsConfig, served: bool) -> list[str]:
    """What does not fit between the terms that say `url: judge_server` and whether `reward_actors.judge_server`
    is set (`served`), one line per problem naming its key; [] when all fit."""
    problems, users = [], 0
    for task, terms in config.tasks.items():
        for index, term in enumerate(terms):
            if term.options.get("url") != JUDGE_SERVER:
                continue
            users += 1
            key = f"rewards.tasks.{task}[{index}]"
            if term.name != "remote" or term.options.get("mode") != "judge":
                problems.append(f"{key}: url judge_server is a chat endpoint for the remote reward in judge mode; "
                                f"got name {term.name!r}, mode {term.options.get('mode', 'batch')!r}")
            if not served:
                problems.append(f"{key}.options.url: judge_server needs reward_actors.judge_server (the model to "
                                "serve and the python of its environment), which is null; set it, or give the "
                                "endpoint's URL")
    if served and not users:
        problems.append("reward_actors.judge_server: set, but no term of rewards.tasks has options.url: judge_server; "
                        "point a remote judge term at it, or set reward_actors.judge_server to null")
    return problems


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """No redirect is followed: the 3xx reaches the caller as an HTTPError."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def _basic_token(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


class _Retryable(Exception):
    def __init__(self, category: str, message: str):
        super().__init__(message)
        self.category = category


def _read_error_body(exc: urllib.error.HTTPError) -> str:
    try:
        return _excerpt(exc.read(2048).decode("utf-8", "replace"))
    except Exception:
        return "<unreadable body>"


def _excerpt(value: Any, limit: int = 200) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
