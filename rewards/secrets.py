"""Keeping credentials out of text: URL userinfo removed, known secrets replaced by `<redacted>`.

Reward options reach error messages, reasons and logs; a `user:password@` in a URL or an API key echoed
by a server must not ride along (see `rewards/remote.py` for where the credentials are used).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

REDACTED = "<redacted>"


def without_userinfo(url: str) -> str:
    """`url` with any `user:password@` removed from its network location; other text unchanged."""
    parsed = urllib.parse.urlsplit(url)
    if "@" not in parsed.netloc:
        return url
    return urllib.parse.urlunsplit(parsed._replace(netloc=parsed.netloc.rsplit("@", 1)[1]))


def shown_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """`options` for an error message: string values that are URLs lose their userinfo."""
    return {key: without_userinfo(value) if isinstance(value, str) and "://" in value else value
            for key, value in options.items()}


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret of 3 or more characters replaced by REDACTED (longest first, so a secret
    that contains another is replaced whole)."""
    for secret in sorted((s for s in secrets if len(s) >= 3), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text
