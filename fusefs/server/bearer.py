"""Bearer-token checking for the store's Cloud Storage routes (`--require-token`).

Two sources of truth, chosen by the form of the setting:

* a file (`--require-token /etc/modelfs/tokens`): one token per line, blank lines and
  `#` comments ignored; re-read when it changes, so tokens rotate without a restart.
  Tokens are kept only as SHA-256 digests and compared by digest.
* an introspection endpoint (`--require-token https://auth.internal/introspect`), in
  the shape of OAuth 2.0 Token Introspection (RFC 7662): the store POSTs
  `token=<token>&token_type_hint=access_token` (form-encoded) and accepts the token when
  the answer is `200` with JSON `{"active": true}`; when the answer has `exp` (unix
  seconds) it must be in the future, and when it has `scope` (space-separated) one of
  them must allow reading Cloud Storage objects. Answers are cached (accepted tokens
  until `exp`, at most a minute; refused ones for a few seconds), at most
  `CACHE_ENTRIES` tokens. An endpoint that cannot answer is `UNAVAILABLE`, not a refusal.

`check(headers)` gives the verdict for one request's headers (an HTTP header dict or
gRPC invocation metadata); `check_bearer(headers)` is the plain yes/no. With an
introspection endpoint (`blocking`), both may wait on the network: call them off any
event loop. With a file they cost a digest and, at most once a second, a stat (and a
re-read when the file changed).
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

import httpx

log = logging.getLogger(__name__)

READ_SCOPES = frozenset(
    {
        "https://www.googleapis.com/auth/devstorage.read_only",
        "https://www.googleapis.com/auth/devstorage.read_write",
        "https://www.googleapis.com/auth/devstorage.full_control",
        "https://www.googleapis.com/auth/cloud-platform",
        "https://www.googleapis.com/auth/cloud-platform.read-only",
    }
)
CACHE_ENTRIES = 4096
ACCEPT_TTL = 60.0
REFUSE_TTL = 5.0
INTROSPECT_TIMEOUT = 5.0
MAX_TOKENS_FILE = 1 << 20
_BEARER = re.compile(r"^bearer +([A-Za-z0-9\-._~+/]+=*) *$", re.IGNORECASE)  # RFC 6750 b64token
MAX_TOKEN = 8192


class Verdict(enum.Enum):
    OK = "ok"
    MISSING = "missing"  # no bearer token in the request
    INVALID = "invalid"  # a token, but not one we accept
    UNAVAILABLE = "unavailable"  # the introspection endpoint did not answer


class TokenSpecError(ValueError):
    """A `--require-token` value that cannot be used; one line for a person."""


def bearer_token(headers: Mapping[str, str] | Iterable[tuple[str, str | bytes]]) -> str | None:
    """The bearer token of an `authorization` header/metadatum, or None."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    for key, value in items:
        if key.lower() == "authorization":
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            if len(text) > MAX_TOKEN + 16:
                return None
            match = _BEARER.match(text)
            return match[1] if match else None
    return None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenChecker:
    """Accepts the tokens of a file or of an introspection endpoint (module docstring)."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self._url: str | None = None
        self._path: str | None = None
        if spec.startswith(("http://", "https://")):
            parts = urlsplit(spec)
            if not parts.hostname or parts.username is not None:
                raise TokenSpecError(f"--require-token: bad introspection URL {spec!r}")
            self._url = spec
            self._http = httpx.Client(timeout=INTROSPECT_TIMEOUT, follow_redirects=False)
        else:
            self._path = os.path.abspath(spec)
            self._tokens: frozenset[bytes] = frozenset()
            self._stamp: tuple[int, int, int] | None = None
            self._checked_at = 0.0
            self._reload()
        self._lock = threading.Lock()
        self._cache: OrderedDict[bytes, tuple[bool, float]] = OrderedDict()

    def close(self) -> None:
        if self._url is not None:
            self._http.close()

    @property
    def blocking(self) -> bool:
        """Whether a check may wait on the network (introspection), not just on a stat."""
        return self._url is not None

    # -- verdicts ----------------------------------------------------------------------

    def check(self, headers: Mapping[str, str] | Iterable[tuple[str, str | bytes]]) -> Verdict:
        token = bearer_token(headers)
        if token is None:
            return Verdict.MISSING
        if self._path is not None:
            return Verdict.OK if self._file_accepts(token) else Verdict.INVALID
        return self._introspect(token)

    def check_bearer(self, headers: Mapping[str, str] | Iterable[tuple[str, str | bytes]]) -> bool:
        """Whether the request carries a token we accept."""
        return self.check(headers) is Verdict.OK

    # -- a file ------------------------------------------------------------------------

    def _reload(self) -> None:
        assert self._path is not None
        try:
            st = os.stat(self._path)
            if st.st_size > MAX_TOKENS_FILE:
                raise TokenSpecError(f"token file {self._path}: larger than {MAX_TOKENS_FILE}")
            with open(self._path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise TokenSpecError(f"token file {self._path}: {e}") from None
        tokens = {line.strip() for line in lines}
        self._tokens = frozenset(_digest(t) for t in tokens if t and not t.startswith("#"))
        self._stamp = (st.st_ino, st.st_size, st.st_mtime_ns)

    def _file_accepts(self, token: str) -> bool:
        now = time.monotonic()
        with self._lock:
            if now - self._checked_at >= 1.0:  # look for a changed file at most once a second
                self._checked_at = now
                try:
                    st = os.stat(self._path or "")
                    if (st.st_ino, st.st_size, st.st_mtime_ns) != self._stamp:
                        self._reload()
                        log.info(
                            "token file %s reloaded (%d tokens)", self._path, len(self._tokens)
                        )
                except (OSError, TokenSpecError) as e:
                    log.warning("token file: %s; keeping the tokens read before", e)
            return _digest(token) in self._tokens

    # -- an introspection endpoint -----------------------------------------------------

    def _introspect(self, token: str) -> Verdict:
        key, now = _digest(token), time.monotonic()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and cached[1] > now:
                self._cache.move_to_end(key)
                return Verdict.OK if cached[0] else Verdict.INVALID
        assert self._url is not None
        try:
            response = self._http.post(
                self._url,
                data={"token": token, "token_type_hint": "access_token"},
                headers={"accept": "application/json"},
            )
        except httpx.HTTPError as e:
            log.warning("token introspection failed: %s", e.__class__.__name__)
            return Verdict.UNAVAILABLE
        if response.status_code != 200:
            log.warning("token introspection answered HTTP %d", response.status_code)
            return Verdict.UNAVAILABLE
        try:
            body = json.loads(response.content[:65536])
        except ValueError:
            log.warning("token introspection sent malformed JSON")
            return Verdict.UNAVAILABLE
        accepted, ttl = _judge(body)
        with self._lock:
            self._cache[key] = (accepted, now + (ttl if accepted else REFUSE_TTL))
            self._cache.move_to_end(key)
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return Verdict.OK if accepted else Verdict.INVALID


def _judge(body: object) -> tuple[bool, float]:
    """(accepted, seconds to trust that) from an RFC 7662 answer."""
    if not isinstance(body, dict) or body.get("active") is not True:
        return False, 0.0
    ttl = ACCEPT_TTL
    exp = body.get("exp")
    if exp is not None:
        if not isinstance(exp, int) or isinstance(exp, bool):
            return False, 0.0
        left = exp - time.time()
        if left <= 0:
            return False, 0.0
        ttl = min(ttl, left)
    scope = body.get("scope")
    if scope is not None and (
        not isinstance(scope, str) or not READ_SCOPES.intersection(scope.split())
    ):
        return False, 0.0
    return True, ttl
