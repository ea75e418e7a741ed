"""Who may read which sources: API keys and their scopes, without HTTP.

`MMRAG_API_KEYS` maps keys to the sources each may read: `k1=finance,legal;k2=*` (`*` = every
source). `MMRAG_API_KEY`, the single key, reads every source. Keys may not hold `=`, `;` or `,`.
With neither set, the API is open (loopback only: `mmrag api` refuses other binds) and reads all.

A request's sources are checked against its key's scope before anything is searched: asking for a
source (or a file of a source) outside the scope is `Forbidden` (HTTP 403), never an empty answer;
asking for nothing searches every source in the scope. The graph context is filtered the same way
(`GraphStore.query_context(sources=...)`).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass

KEYS_VAR, KEY_VAR = "MMRAG_API_KEYS", "MMRAG_API_KEY"


class Forbidden(PermissionError):
    """A request for sources outside its key's scope."""


@dataclass(frozen=True)
class Scope:
    """The sources a caller may read; `sources` None = every source. `label` names the key in
    messages and logs without showing it."""

    sources: frozenset[str] | None = None
    label: str = "open"

    @property
    def everything(self) -> bool:
        return self.sources is None

    def allows(self, source: str) -> bool:
        return self.sources is None or source in self.sources

    def sources_for(self, requested: list[str] | None, files: list[str] | None = None) -> list[str] | None:
        """The sources a request searches: the ones it names (each within the scope), else every
        source of the scope (None = no filter). Files named `source:path` must be in the scope too."""
        asked = list(requested or [])
        asked_files = [f.partition(":")[0] for f in files or [] if ":" in f]
        outside = sorted({s for s in [*asked, *asked_files] if not self.allows(s)})
        if outside:
            raise Forbidden(f"this API key may not read source {outside[0]!r}")
        if asked:
            return asked
        return None if self.sources is None else sorted(self.sources)


OPEN = Scope()


def parse_keys(spec: str) -> dict[str, Scope]:
    """`k1=finance,legal;k2=*` -> {key: Scope}. A malformed entry is a ValueError naming its position
    (never the key)."""
    keys: dict[str, Scope] = {}
    for n, entry in enumerate((e.strip() for e in spec.split(";")), 1):
        if not entry:
            continue
        key, sep, scope = entry.partition("=")
        key, names = key.strip(), [s.strip() for s in scope.split(",") if s.strip()]
        if not sep or not key or not names:
            raise ValueError(f"{KEYS_VAR}: entry {n} is not key=source[,source...] or key=*")
        if key in keys:
            raise ValueError(f"{KEYS_VAR}: entry {n} repeats a key")
        keys[key] = Scope(None if "*" in names else frozenset(names), label=f"key {n}")
    return keys


def keyring(env: Mapping[str, str] | None = None) -> dict[str, Scope]:
    """Every key the API accepts and its scope ({} = no key configured: the API is open)."""
    env = os.environ if env is None else env
    keys = parse_keys(env.get(KEYS_VAR, ""))
    single = env.get(KEY_VAR, "").strip()
    if single and single not in keys:
        keys[single] = Scope(None, label=KEY_VAR)
    return keys


def scope_of(keys: dict[str, Scope], authorization: str | None) -> Scope | None:
    """The scope of the Bearer key in an Authorization header; None when it is missing or wrong.
    Every key is compared in constant time, so timing tells nothing about which one nearly matched."""
    if not keys:
        return OPEN
    auth = authorization or ""
    if not auth.startswith("Bearer "):
        return None
    given = auth[len("Bearer "):].strip().encode()
    found = None
    for key, scope in keys.items():
        if hmac.compare_digest(given, key.encode()) and found is None:
            found = scope
    return found


def source_of(file_key: str) -> str:
    return file_key.partition(":")[0]
