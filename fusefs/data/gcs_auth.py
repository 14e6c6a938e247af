"""Google Cloud Storage: where its two APIs are, and the credentials that go with them.

The JSON API (listings, object metadata, ranged media GETs) lives at a base URL;
BidiReadObject at a gRPC `HOST:PORT`. Both default to Google's public endpoints
over TLS and can be pointed at a private endpoint or an emulator.

Credentials are Application Default Credentials through `google-auth` (a key file
named by GOOGLE_APPLICATION_CREDENTIALS — service account or external account —,
gcloud's user credentials, or the GCE/GKE metadata server), read-only scope.
With STORAGE_EMULATOR_HOST set they are anonymous, as in Google's own clients.

`TokenSource` owns the one access token of a process:

* refreshed before it expires (google-auth's margin), one refresh at a time, on the
  calling thread — a gRPC plugin thread or a worker thread, never the trio loop;
* refreshed once more when the service refuses it (`reject`), and no more than
  that: a token that was just issued for that reason and is refused before the service
  ever took it (`accepted`) is a permission problem, remembered like a failed refresh;
* a failed refresh (or a refusal of a fresh token) is remembered for
  `failure_backoff` seconds, during which every caller fails at once with
  `AuthError`: one log line per failure, not a storm of token requests or of calls
  the service refuses;
* with `TokenSource.deferred`, the credentials themselves are looked for (ADC) only
  when a first token is wanted, on that caller's thread: a process that may never
  read Cloud Storage does not pay for the search (which can ask the metadata server);
* never logged, and attached only to requests for the storage endpoints
  (`GcsAuth.json_headers` checks the URL's origin; gRPC call credentials exist only
  on the channel to the storage gRPC endpoint). Bearer tokens travel only over TLS,
  or in the clear to a loopback address (tests, a local emulator).

Over gRPC the token is attached by a call-credentials plugin, which gRPC runs on its
own thread. gRPC reports a plugin failure as UNAVAILABLE (which a stream would
retry); the interceptor of `GcsAuth.grpc_channel` turns it into UNAUTHENTICATED
(`CredentialsRpcError`), refreshes a due token before each call starts (on the thread
that starts it) so that it knows which token the call sends, tells the token source
when the service took that token (a first answer) or refused it (UNAUTHENTICATED),
and says `CredentialsRpcError` too when a new token cannot help.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import google.auth
import google.auth.credentials
import google.auth.exceptions
import google.auth.transport
import google.auth.transport.requests
import grpc
import requests
import trio

from fusefs.data.errors import AuthError
from fusefs.network import grpc_root_certificates, host_port

log = logging.getLogger(__name__)

READ_ONLY_SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"
DEFAULT_JSON_ENDPOINT = "https://storage.googleapis.com"
DEFAULT_GRPC_ENDPOINT = "grpcs://storage.googleapis.com:443"
EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
REFRESH_TIMEOUT = 10.0  # per request to the token endpoint (google-auth's own default: 120 s)
FAILURE_BACKOFF = 10.0  # after a failed refresh, fail at once for this long
_PLUGIN_FAILURE = "Getting metadata from plugin failed"  # how gRPC reports a plugin error
_TOKEN = re.compile(r"^[\x21-\x7e]{1,8192}$")  # what may go into a header


class GcsSetupError(ValueError):
    """Endpoints or credentials that cannot be used; the message is one line for a person."""


# -- endpoints -------------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_port(netloc: str, default_port: int | None, what: str) -> tuple[str, int]:
    parts = urlsplit("//" + netloc)
    try:
        port = parts.port
    except ValueError:
        port = None
        netloc = ""  # fall through to the error below
    host = parts.hostname
    if not host or parts.username is not None or (port is None and default_port is None):
        raise ValueError(f"{what}: expected HOST:PORT, got {netloc!r}")
    return host, port if port is not None else default_port or 0


@dataclass(frozen=True)
class JsonEndpoint:
    """The JSON API's base URL: scheme://host[:port][/path], without a trailing slash."""

    base: str

    @classmethod
    def parse(cls, text: str) -> JsonEndpoint:
        """`https://HOST[:PORT][/PATH]`, `http://…`, or a bare `HOST:PORT` (plain HTTP)."""
        text = text.strip()
        if "://" not in text:
            text = "http://" + text
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or parts.query or parts.fragment:
            raise ValueError(f"expected an http(s) URL or HOST:PORT, got {text!r}")
        host, port = _host_port(parts.netloc, 443 if parts.scheme == "https" else 80, "endpoint")
        netloc = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            netloc += f":{port}"
        return cls(f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}")

    @property
    def tls(self) -> bool:
        return self.base.startswith("https://")

    @property
    def loopback(self) -> bool:
        return _is_loopback(urlsplit(self.base).hostname or "")

    def owns(self, url: str) -> bool:
        """Whether `url` is on this endpoint: same scheme, host and port, under its path."""
        mine, theirs = urlsplit(self.base), urlsplit(url)
        try:
            ports = (mine.port, theirs.port)
        except ValueError:
            return False
        default = {"http": 80, "https": 443}
        return (
            mine.scheme == theirs.scheme.lower()
            and (mine.hostname or "") == (theirs.hostname or "").lower()
            and (ports[0] or default[mine.scheme]) == (ports[1] or default.get(theirs.scheme, 0))
            and theirs.username is None
            and (theirs.path == mine.path or theirs.path.startswith(mine.path + "/"))
        )


@dataclass(frozen=True)
class GrpcEndpoint:
    """The gRPC data plane: HOST:PORT, with or without TLS."""

    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, text: str) -> GrpcEndpoint:
        """`grpcs://HOST[:PORT]` or `https://…` (TLS); `grpc://HOST:PORT`, `http://…` or a
        bare `HOST:PORT` (no TLS)."""
        text = text.strip()
        scheme, sep, rest = text.partition("://")
        if not sep:
            scheme, rest = "grpc", text
        scheme = scheme.lower()
        if scheme not in ("grpc", "grpcs", "http", "https") or not rest or "/" in rest.rstrip("/"):
            raise ValueError(f"expected [grpcs://]HOST:PORT, got {text!r}")
        tls = scheme in ("grpcs", "https")
        host, port = _host_port(rest.rstrip("/"), 443 if tls else None, "gRPC endpoint")
        return cls(host, port, tls)

    @property
    def target(self) -> str:
        """HOST:PORT as gRPC dials it."""
        return host_port(self.host, self.port)

    def __str__(self) -> str:
        return ("grpcs://" if self.tls else "grpc://") + self.target

    @property
    def loopback(self) -> bool:
        return _is_loopback(self.host)


@dataclass(frozen=True)
class GcsEndpoints:
    json: JsonEndpoint
    grpc: GrpcEndpoint
    anonymous: bool  # send no credentials at all (emulators, public buckets)

    @classmethod
    def resolve(
        cls,
        json_endpoint: str | None = None,
        grpc_endpoint: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> GcsEndpoints:
        """From the settings; STORAGE_EMULATOR_HOST makes the JSON endpoint default to the
        emulator and the credentials anonymous. GcsSetupError on a bad value."""
        emulator = (os.environ if environ is None else environ).get(EMULATOR_ENV, "").strip()
        try:
            json = JsonEndpoint.parse(json_endpoint or emulator or DEFAULT_JSON_ENDPOINT)
        except ValueError as e:
            where = "gcs endpoint" if json_endpoint else EMULATOR_ENV
            raise GcsSetupError(f"{where}: {e}") from None
        try:
            grpc_ep = GrpcEndpoint.parse(grpc_endpoint or DEFAULT_GRPC_ENDPOINT)
        except ValueError as e:
            raise GcsSetupError(f"gcs gRPC endpoint: {e}") from None
        return cls(json, grpc_ep, anonymous=bool(emulator))


# -- tokens ----------------------------------------------------------------------------


class _BoundedRequest(google.auth.transport.requests.Request):
    """google-auth's requests transport with a cap on each request's time."""

    def __init__(self, session: requests.Session, cap: float) -> None:
        super().__init__(session)
        self._cap = cap

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> google.auth.transport.Response:
        timeout = min(timeout or self._cap, self._cap)
        response: google.auth.transport.Response = super().__call__(  # type: ignore[no-untyped-call]
            url, method, body, headers, timeout, **kwargs
        )
        return response


def refresh_transport(timeout: float = REFRESH_TIMEOUT) -> google.auth.transport.Request:
    """How google-auth reaches token endpoints and the metadata server: requests (which ADC
    needs to find the metadata server at all), bounded in time, never redirected."""
    session = requests.Session()
    session.max_redirects = 0  # a token request is never sent on to another host
    return _BoundedRequest(session, timeout)


def _describe(e: BaseException) -> str:
    """One line about a google-auth failure (its first argument, not its response body)."""
    first = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
    line = " ".join(first.split())
    return f"{type(e).__name__}: {line[:200]}"


Loader = Callable[[google.auth.transport.Request], google.auth.credentials.Credentials]


class TokenSource:
    """The access token of one set of credentials; thread-safe (see the module docstring)."""

    def __init__(
        self,
        credentials: google.auth.credentials.Credentials | Loader,
        request: google.auth.transport.Request | None = None,
        *,
        failure_backoff: float = FAILURE_BACKOFF,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`credentials`, or a function that finds them (called once, when the first
        token is wanted; GcsSetupError when there are none)."""
        self.anonymous = isinstance(credentials, google.auth.credentials.AnonymousCredentials)
        self.failure_backoff = failure_backoff
        self.refreshes = 0  # tokens obtained
        self.failures = 0  # refreshes that failed
        self._credentials: google.auth.credentials.Credentials | None = None
        self._loader: Loader | None = None
        if isinstance(credentials, google.auth.credentials.Credentials):
            self._credentials = credentials
        else:
            self._loader = credentials
        self._request = request or refresh_transport()
        self._clock = clock
        self._lock = threading.Lock()  # the state below; never held across I/O
        self._refreshing = threading.Lock()
        self._stale = False  # refused by the service: refresh before the next use
        # the token in hand replaced one the service refused, and has not been taken yet
        self._forced = False
        self._failure: str | None = None
        self._retry_at = 0.0

    @property
    def failure(self) -> str | None:
        """Why the last attempt to get a token failed (None: it did not)."""
        return self._failure

    @classmethod
    def deferred(cls, request: google.auth.transport.Request | None = None) -> TokenSource:
        """Application Default Credentials, looked for when the first token is wanted."""
        return cls(application_default, request)

    def _usable_locked(self) -> str | None:
        credentials = self._credentials
        if credentials is None or self._stale or self._failure is not None:
            return None
        token = credentials.token
        return str(token) if token and credentials.valid else None

    def token_now(self) -> str | None:
        """The token to send, if one is in hand and fresh; never does I/O."""
        with self._lock:
            return self._usable_locked()

    def token(self) -> str:
        """The token to send, refreshed first when due (blocks); AuthError when none can
        be had. Concurrent callers wait for one refresh."""
        if self.anonymous:
            raise AuthError("anonymous credentials have no token")
        with self._lock:
            if (token := self._usable_locked()) is not None:
                return token
        with self._refreshing:  # one refresh at a time; `_lock` stays free meanwhile
            with self._lock:
                if (token := self._usable_locked()) is not None:
                    return token  # another caller refreshed it
                now = self._clock()
                if self._failure is not None and now < self._retry_at:
                    raise AuthError(self._failure)
                forced = self._stale
            try:
                if self._credentials is None:
                    assert self._loader is not None
                    self._credentials = self._loader(self._request)
                self._credentials.refresh(self._request)  # type: ignore[no-untyped-call]
                token = self._credentials.token
                if not isinstance(token, str) or not _TOKEN.match(token):
                    raise ValueError("the token endpoint sent no usable token")
            except GcsSetupError as e:
                message = f"storage credentials: {e}"
                self._fail(message, now)
                raise AuthError(message) from None
            except (google.auth.exceptions.GoogleAuthError, OSError, ValueError) as e:
                message = f"storage credentials: cannot get a token ({_describe(e)})"
                self._fail(message, now)
                raise AuthError(message) from None
            with self._lock:
                if self._failure is not None:
                    log.info("storage credentials: a token was obtained again")
                self._failure, self._stale, self._forced = None, False, forced
                self.refreshes += 1
            return token

    def _fail(self, message: str, now: float) -> None:
        """No token for `failure_backoff` seconds (one log line per new reason)."""
        with self._lock:
            if message != self._failure:
                log.warning(
                    "%s; storage requests fail for the next %.0fs", message, self.failure_backoff
                )
            self._failure, self._retry_at = message, now + self.failure_backoff
            self.failures += 1

    @property
    def epoch(self) -> int:
        """How many tokens were obtained so far: a call that starts now sends the token of
        this epoch (or a later one)."""
        return self.refreshes

    def accepted(self, token: str | None = None, *, since: int | None = None) -> None:
        """The storage service took `token` (None: the token in hand), or the token of a
        call that began at epoch `since`: a later refusal of it is worth a new token."""
        with self._lock:
            current = self._credentials.token if self._credentials is not None else None
            if (token is None or token == current) and (since is None or since == self.refreshes):
                self._forced = False

    def reject(self, token: str | None = None, *, since: int | None = None) -> bool:
        """The storage service refused `token` (None: the token in hand), or the token of a
        call that started at epoch `since`. True when trying again with a new token is
        worth it: once per token obtained the ordinary way. False when a freshly issued
        token is refused too — a permission problem: then every caller fails at once for
        `failure_backoff` seconds (the caller says so; nothing is logged here)."""
        if self.anonymous:
            return False
        with self._lock:
            current = self._credentials.token if self._credentials is not None else None
            if token is not None and token != current:
                return True  # already replaced
            if since is not None and since < self.refreshes:
                return True  # replaced since that call began
            if self._stale:
                return True  # a refresh is due anyway
            if self._forced:
                self._failure = "storage credentials: refused by the storage service"
                self._retry_at = self._clock() + self.failure_backoff
                return False
            self._stale = True
            return True

    def authorization(self) -> dict[str, str]:
        """Headers for a request to the storage service (blocks when a refresh is due)."""
        return {} if self.anonymous else {"authorization": "Bearer " + self.token()}

    async def authorization_async(self) -> dict[str, str]:
        """`authorization` for trio code: the refresh, when due, runs on a worker thread."""
        if self.anonymous:
            return {}
        if (token := self.token_now()) is not None:
            return {"authorization": "Bearer " + token}
        return await trio.to_thread.run_sync(self.authorization, abandon_on_cancel=True)


def application_default(
    request: google.auth.transport.Request,
) -> google.auth.credentials.Credentials:
    """Application Default Credentials with the read-only scope (blocks: ADC may read
    files and look for the metadata server). GcsSetupError when there are none."""
    try:
        credentials, _project = google.auth.default(scopes=[READ_ONLY_SCOPE], request=request)
    except (google.auth.exceptions.GoogleAuthError, OSError, ValueError) as e:
        raise GcsSetupError(
            "no usable Google credentials: set GOOGLE_APPLICATION_CREDENTIALS to a key file, "
            "run `gcloud auth application-default login`, or run on Google Cloud "
            f"({_describe(e)})"
        ) from None
    return credentials


def load_credentials(anonymous: bool = False) -> TokenSource:
    """The token source of Application Default Credentials, found now (blocks);
    GcsSetupError when there are none. Anonymous: no credentials at all."""
    if anonymous:
        return TokenSource(google.auth.credentials.AnonymousCredentials())  # type: ignore[no-untyped-call]
    request = refresh_transport()
    return TokenSource(application_default(request), request)


# -- gRPC ------------------------------------------------------------------------------


class _Plugin(grpc.AuthMetadataPlugin):
    """Attaches the bearer token to each call; runs on gRPC's own threads."""

    def __init__(self, tokens: TokenSource, endpoint: GrpcEndpoint) -> None:
        self._tokens = tokens
        self._endpoint = endpoint

    def __call__(
        self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback
    ) -> None:
        # gRPC gives "<scheme>://HOST[:PORT]/<service>", the scheme sometimes empty.
        netloc = context.service_url.partition("://")[2].partition("/")[0]
        where = urlsplit("//" + netloc)
        try:
            port = where.port
        except ValueError:
            port = -1
        if (where.hostname or "").lower() != self._endpoint.host.lower() or port not in (
            None,
            self._endpoint.port,
        ):
            callback((), AuthError(f"refusing to send credentials to {where.netloc!r}"))
            return
        try:
            token = self._tokens.token()
        except AuthError as e:
            callback((), e)
            return
        callback((("authorization", "Bearer " + token),), None)


class CredentialsRpcError(grpc.RpcError):
    """UNAUTHENTICATED for a call that never left: no token could be had for it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self._message = message

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAUTHENTICATED

    def details(self) -> str:
        return self._message

    def trailing_metadata(self) -> tuple[Any, ...]:
        return ()


class _CheckedCall:
    """A streaming call whose failures say what credentials had to do with them."""

    def __init__(self, call: Any, tokens: TokenSource, epoch: int) -> None:
        self._call = call
        self._tokens = tokens
        self._epoch = epoch  # the token source's when the call began
        self._answered = False

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            message = next(self._call)
        except grpc.RpcError as e:
            raise _translate(e, self._tokens, self._epoch) from None
        if not self._answered:  # the service took the call's token
            self._answered = True
            self._tokens.accepted(since=self._epoch)
        return message

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


def _translate(e: grpc.RpcError, tokens: TokenSource, epoch: int) -> grpc.RpcError:
    """A call's failure as the caller should see it: UNAUTHENTICATED as it came when a new
    token is worth a try (the next call gets one), `CredentialsRpcError` when not."""
    code, details = e.code(), e.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE and details.startswith(_PLUGIN_FAILURE):
        return CredentialsRpcError(tokens.failure or f"storage credentials: {details[:200]}")
    if code == grpc.StatusCode.UNAUTHENTICATED and not tokens.reject(since=epoch):
        return CredentialsRpcError(
            tokens.failure or f"storage credentials refused: {details[:200]}"
        )
    return e


class _Interceptor(grpc.StreamStreamClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Starts each call with the token in hand refreshed if due (on the calling thread,
    which is never the trio loop's), so that the call's epoch names the token its
    plugin sends; failures then say what credentials had to do with them."""

    def __init__(self, tokens: TokenSource) -> None:
        self._tokens = tokens

    def _epoch(self) -> int:
        try:
            self._tokens.token()
        except AuthError:
            pass  # the plugin fails the call the same way, without sending it
        return self._tokens.epoch

    def intercept_stream_stream(
        self, continuation: Any, client_call_details: grpc.ClientCallDetails, request_iterator: Any
    ) -> Any:
        epoch = self._epoch()
        return _CheckedCall(
            continuation(client_call_details, request_iterator), self._tokens, epoch
        )

    def intercept_unary_stream(
        self, continuation: Any, client_call_details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        epoch = self._epoch()
        return _CheckedCall(continuation(client_call_details, request), self._tokens, epoch)


# -- both ------------------------------------------------------------------------------


class GcsAuth:
    """The storage endpoints and the credentials that go with them, for one process."""

    def __init__(self, endpoints: GcsEndpoints, tokens: TokenSource) -> None:
        if not tokens.anonymous:
            if not endpoints.json.tls and not endpoints.json.loopback:
                raise GcsSetupError(
                    f"gcs endpoint {endpoints.json.base} is plain HTTP to another host: "
                    "credentials go only over https (or to a loopback address)"
                )
            if not endpoints.grpc.tls and not endpoints.grpc.loopback:
                raise GcsSetupError(
                    f"gcs gRPC endpoint {endpoints.grpc} has no TLS and is not loopback: "
                    "credentials go only over grpcs:// (or to a loopback address)"
                )
        self.endpoints = endpoints
        self.tokens = tokens

    @classmethod
    def load(
        cls,
        json_endpoint: str | None = None,
        grpc_endpoint: str | None = None,
        environ: Mapping[str, str] | None = None,
        *,
        deferred: bool = False,
    ) -> GcsAuth:
        """Endpoints from the settings and ADC; GcsSetupError when unusable. ADC is looked
        for now (blocks), or with `deferred` when a first token is wanted (see
        `TokenSource.deferred`: no I/O here, and a missing credential is an AuthError then)."""
        endpoints = GcsEndpoints.resolve(json_endpoint, grpc_endpoint, environ)
        if deferred and not endpoints.anonymous:
            return cls(endpoints, TokenSource.deferred())
        return cls(endpoints, load_credentials(endpoints.anonymous))

    async def json_headers(self, url: str) -> dict[str, str]:
        """Authorization for a request to `url`: none unless `url` is on the JSON endpoint.
        AuthError when a token is due and cannot be had."""
        if not self._json_origin(url):
            return {}
        return await self.tokens.authorization_async()

    def json_headers_blocking(self, url: str) -> dict[str, str]:
        """`json_headers` for a worker thread: blocks while a token is fetched."""
        if not self._json_origin(url):
            return {}
        return self.tokens.authorization()

    def _json_origin(self, url: str) -> bool:
        if self.endpoints.json.owns(url):
            return True
        log.debug("no credentials for %s: not the storage endpoint", urlsplit(url).netloc)
        return False

    def owns_grpc(self, endpoint: str, tls: bool) -> bool:
        """Whether a data-plane location's HOST:PORT (and TLS) is the storage gRPC endpoint."""
        try:
            other = GrpcEndpoint.parse(("grpcs://" if tls else "grpc://") + endpoint)
        except ValueError:
            return False
        ep = self.endpoints.grpc
        return (other.host.lower(), other.port, other.tls) == (ep.host.lower(), ep.port, ep.tls)

    def grpc_channel(self, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
        """A channel to the storage gRPC endpoint whose calls carry the token."""
        ep = self.endpoints.grpc
        if self.tokens.anonymous:
            if ep.tls:
                creds = grpc.ssl_channel_credentials(grpc_root_certificates())
                return grpc.secure_channel(ep.target, creds, options)
            return grpc.insecure_channel(ep.target, options)
        call = grpc.metadata_call_credentials(_Plugin(self.tokens, ep), name="storage-token")
        if ep.tls:
            base = grpc.ssl_channel_credentials(grpc_root_certificates())
        else:
            # Plain TCP, checked by gRPC to be local: the one way it lets call credentials
            # go without TLS (GcsAuth refuses non-loopback plain endpoints).
            base = grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP)
        channel = grpc.secure_channel(
            ep.target, grpc.composite_channel_credentials(base, call), options
        )
        return grpc.intercept_channel(channel, _Interceptor(self.tokens))
