"""The one secrets scan: no cluster file, run config or sweep may carry a credential.

Cluster YAMLs (:mod:`jigclu.cluster.validate`), run configs, ``key=value`` overrides and sweep
files (:func:`jigclu.config.refuse_secrets`) all go through it. Parsed documents are scanned key
by key (:func:`scan_secrets`); the raw lines are scanned too (:func:`comment_secrets`), since a
secret in a YAML comment never reaches the parsed document. A match names where and what it
looks like, never the matched text: a report must not echo the secret it found.
Credentials belong in the environment (``AWS_ACCESS_KEY_ID``, ``GOOGLE_APPLICATION_CREDENTIALS``,
...) or a cloud role, never in a file that gets copied, committed or written into a run.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

KeyPath = tuple[str | int, ...]
Problem = tuple[KeyPath, str]

_SECRET_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), "looks like an AWS access key id"),
    (re.compile(r"(?i)\baws_secret_access_key\b"), "names an AWS secret access key"),
    (re.compile(r"(?i)\baws_session_token\b"), "names an AWS session token"),
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}"), "looks like a GitHub token"),
    (re.compile(r"\bgithub_pat_[A-Za-z0-9_]{20,}"), "looks like a GitHub token"),
    (re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----"), "contains a private key"),
    (re.compile(r"""["']private_key(?:_id)?["']\s*:"""), "contains a GCP service-account key (JSON)"),
    (re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"), "looks like a Slack token"),
    (re.compile(r"\bAIza[0-9A-Za-z_\-]{35}\b"), "looks like a Google API key"),
    # user:secret@ in a URI; the secret may hold "/" (AWS keys do), but host:port/path@x is no secret
    (re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@'\"]+:(?!\d*/)[^\s@'\"]+@"),
     "embeds credentials in a URI (user:secret@)"),
]
_SECRET_KEYS = {
    "aws_access_key_id", "aws_secret_access_key", "secret_access_key", "secretaccesskey",
    "aws_session_token", "session_token", "private_key", "private_key_id", "client_secret",
    "password", "passwd", "api_key", "apikey", "access_token", "auth_token", "token",
}
_SECRET_ENV_NAME = re.compile(r"(?i)(secret|token|password|passwd|api_?key|private_key|access_key)")
_ACCOUNT_PATTERNS = [
    re.compile(r"arn:aws[\w-]*:[\w-]*:[\w-]*:(\d{12}):"),
    re.compile(r"\b(\d{12})\.dkr\.ecr\."),
]
# Documentation placeholders, not accounts: AWS's own example id and repeated digits.
_PLACEHOLDER_ACCOUNTS = {"123456789012", "012345678901", "210987654321"}


def _is_placeholder(value: str) -> bool:
    text = value.strip()
    return (
        not text
        or text.startswith(("$", "<", "{{"))
        or bool(re.search(r"YOUR|REPLACE|CHANGE[-_]?ME|EXAMPLE|PLACEHOLDER|xxxx", text, re.IGNORECASE))
    )


def _is_placeholder_account(digits: str) -> bool:
    return digits in _PLACEHOLDER_ACCOUNTS or len(set(digits)) == 1


def secret_matches(text: str) -> list[tuple[str, str]]:
    """``(matched text, what it looks like)`` for every credential pattern in ``text``."""
    return [(m.group(0), what) for pattern, what in _SECRET_PATTERNS for m in pattern.finditer(text)]


def account_id_matches(text: str) -> list[tuple[str, str]]:
    """``(account id, message)`` for every non-placeholder AWS account id in an ARN or ECR host."""
    out: list[tuple[str, str]] = []
    for pattern in _ACCOUNT_PATTERNS:
        for m in pattern.finditer(text):
            if not _is_placeholder_account(m.group(1)):
                out.append((m.group(1), "contains what looks like a real AWS account id; use a placeholder"))
    return out


def comment_secrets(text: str, reported: set[str] | None = None) -> list[tuple[int, str]]:
    """``(line number, what it looks like)`` for every credential in the raw lines of ``text``
    that the structured scan did not already report (``reported``: its matched texts)."""
    out: list[tuple[int, str]] = []
    seen = set(reported or ())
    for line_no, line in enumerate(text.splitlines(), start=1):
        for match, what in secret_matches(line) + account_id_matches(line):
            if match not in seen:
                seen.add(match)
                out.append((line_no, what))
    return out


def redact(text: str, hits: set[str]) -> str:
    """``text`` with every matched secret in it replaced by ``***`` (names such as
    ``aws_secret_access_key`` stay: they say what was found, not what it is)."""
    for hit in hits:
        if hit.lower() not in _SECRET_KEYS:
            text = text.replace(hit, "***")
    return text


def format_key_path(path: KeyPath) -> str:
    """``("a", "b", 0, "c")`` -> ``"a.b[0].c"``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _walk(obj: Any, path: KeyPath = ()) -> Iterator[tuple[KeyPath, Any, Any]]:
    """Yield ``(path, key, value)`` for every entry; key is None for list items."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield path + (key,), key, value
            yield from _walk(value, path + (key,))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield path + (i,), None, value
            yield from _walk(value, path + (i,))


def scan_secrets(doc: Any, kind: str | None = "cluster files") -> tuple[list[Problem], set[str]]:
    """The problems in a parsed document, and the matched texts (so the raw-line scan of the
    same file does not report them again); ``kind`` names the files in the messages."""
    problems: list[Problem] = []
    hits: set[str] = set()
    for path, key, value in _walk(doc):
        texts = [str(key)] if key is not None else []
        if isinstance(value, str):
            texts.append(value)
        for text in texts:
            for match, what in secret_matches(text) + account_id_matches(text):
                hits.add(match)
                problems.append((path, what))
        if isinstance(key, str) and key.lower().replace("-", "_") in _SECRET_KEYS:
            if isinstance(value, (str, int)) and not isinstance(value, bool) and not _is_placeholder(str(value)):
                advice = f"; keep credentials out of {kind}" if kind else ""
                problems.append((path, f"holds a credential{advice}"))
        if isinstance(key, str) and "account" in key.lower() and re.fullmatch(r"\d{12}", str(value)):
            if not _is_placeholder_account(str(value)):
                hits.add(str(value))
                problems.append((path, "looks like a real AWS account id; use a placeholder"))
        # Kubernetes env entries: {name: AWS_SECRET_ACCESS_KEY, value: "..."}
        if isinstance(value, dict) and isinstance(value.get("name"), str) and "value" in value:
            literal = value.get("value")
            if _SECRET_ENV_NAME.search(value["name"]) and isinstance(literal, str) and not _is_placeholder(literal):
                problems.append(
                    (path + ("value",), f"sets {value['name']} inline; use valueFrom.secretKeyRef or a cloud role")
                )
    return problems, hits

