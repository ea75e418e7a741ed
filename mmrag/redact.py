"""Keep secrets out of what mmrag writes and shows: URLs lose their credentials, and the values of the
secret settings are masked in any text (error messages, reasons, logs) before it is stored or served.

Secret settings: MMRAG_LLM_API_KEY, MMRAG_TEXT_EMBED_API_KEY, MMRAG_MILVUS_TOKEN, MMRAG_API_KEY, the keys of MMRAG_API_KEYS and
the password in MMRAG_DAGSTER_PG_URL; plus the user:password part of any URL.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
SECRET_VARS = ("MMRAG_LLM_API_KEY", "MMRAG_TEXT_EMBED_API_KEY", "MMRAG_MILVUS_TOKEN", "MMRAG_API_KEY")
_SECRET_PARAMS = re.compile(r"(key|token|secret|password|passwd|pwd|sig|signature|auth)", re.IGNORECASE)
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")


def redact_url(url: str) -> str:
    """`url` without user:password and with secret-looking query values masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, MASK if _SECRET_PARAMS.search(k) else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def secret_values(env: Mapping[str, str] | None = None) -> list[str]:
    """The values to mask: every secret setting that is set (at least 4 characters, so a stray
    one-letter value does not mask the text around it)."""
    env = os.environ if env is None else env
    out = [env.get(v, "") for v in SECRET_VARS]
    for entry in env.get("MMRAG_API_KEYS", "").split(";"):
        out.append(entry.partition("=")[0].strip())
    pg = env.get("MMRAG_DAGSTER_PG_URL", "")
    if pg:
        try:
            out.append(urlsplit(pg).password or "")
        except ValueError:
            pass
    for token in list(out):  # a Milvus token "user:password": its parts too
        if ":" in token:
            out += token.split(":", 1)
    return sorted({v for v in out if len(v) >= 4}, key=len, reverse=True)


def scrub(text: str, env: Mapping[str, str] | None = None) -> str:
    """`text` with URL credentials removed and every secret value masked."""
    if not text:
        return text
    text = _URL.sub(lambda m: redact_url(m.group(0)), text)
    for value in secret_values(env):
        text = text.replace(value, MASK)
    return text
