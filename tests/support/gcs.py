"""Google's credential flow on loopback: a service-account key the test makes, and the
token endpoint it names (which also answers token introspection for the store).

The key file is a real one in every respect but its `token_uri`, so `google-auth`
runs its own service-account flow (signed JWT assertion → access token) against
`TokenServer`, which checks what it gets exactly as the flow is specified: the RS256
signature with the key's public half, the grant type, `aud`, `iss` and the scope.
"""

from __future__ import annotations

import base64
import itertools
import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import crc32c
import grpc
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from fusefs.proto import storage_pb2 as pb

GOOGLE_TOKEN_AUD = "https://oauth2.googleapis.com/token"
READ_ONLY = "https://www.googleapis.com/auth/devstorage.read_only"
CLIENT_EMAIL = "reader@test-project.iam.gserviceaccount.com"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def _unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


class TokenServer:
    """The token endpoint (`POST /token`) and an RFC 7662 introspection endpoint
    (`POST /introspect`) for the tokens it issued; counts everything it is asked."""

    def __init__(self, *, expires_in: int = 3599) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.expires_in = expires_in  # what the client is told
        self.lifetime: float | None = None  # how long a token really lives (None: expires_in)
        self.refuse = False  # answer token requests with 400 invalid_grant
        self.issued: list[str] = []
        self.expiry: dict[str, float] = {}
        self.revoked: set[str] = set()
        self.calls: Counter[str] = Counter()  # token, introspect, bad_assertion
        self.introspected: Counter[str] = Counter()  # by token
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def _send(self, status: int, body: dict[str, object]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = {k: v[-1] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                if self.path == "/token":
                    self._send(*server._token(form))
                elif self.path == "/introspect":
                    self._send(*server._introspect(form))
                else:
                    self._send(404, {"error": "not_found"})

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_port}"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.http.shutdown()
        self.http.server_close()

    # -- the key file ----------------------------------------------------------------

    def key_file(self, path: Path, *, key: rsa.RSAPrivateKey | None = None) -> Path:
        """A service-account key file whose token_uri is this server (`key`: sign with
        another key than the one this server trusts)."""
        pem = (key or self.key).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.write_text(
            json.dumps(
                {
                    "type": "service_account",
                    "project_id": "test-project",
                    "private_key_id": "k1",
                    "private_key": pem.decode(),
                    "client_email": CLIENT_EMAIL,
                    "client_id": "1",
                    "token_uri": f"{self.url}/token",
                }
            )
        )
        return path

    # -- answers ---------------------------------------------------------------------

    def _assertion_ok(self, assertion: str) -> bool:
        try:
            head, claims, signature = assertion.split(".")
            self.key.public_key().verify(
                _unb64(signature),
                f"{head}.{claims}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
            header, body = json.loads(_unb64(head)), json.loads(_unb64(claims))
        except (ValueError, InvalidSignature):
            return False
        now = time.time()
        return (
            header.get("alg") == "RS256"
            and body.get("iss") == CLIENT_EMAIL
            and body.get("aud") == GOOGLE_TOKEN_AUD
            and READ_ONLY in str(body.get("scope", "")).split()
            and body.get("iat", 0) - 60 <= now <= body.get("exp", 0)
        )

    def _token(self, form: dict[str, str]) -> tuple[int, dict[str, object]]:
        with self._lock:
            self.calls["token"] += 1
            if self.refuse:
                return 400, {"error": "invalid_grant", "error_description": "Invalid grant"}
            if form.get("grant_type") != JWT_BEARER or not self._assertion_ok(
                form.get("assertion", "")
            ):
                self.calls["bad_assertion"] += 1
                return 400, {"error": "invalid_grant", "error_description": "Invalid JWT"}
            token = f"ya29.loopback-{next(self._ids)}-{time.monotonic_ns()}"
            self.issued.append(token)
            lifetime = self.lifetime if self.lifetime is not None else self.expires_in
            self.expiry[token] = time.time() + lifetime
            return 200, {
                "access_token": token,
                "expires_in": self.expires_in,
                "token_type": "Bearer",
            }

    def _introspect(self, form: dict[str, str]) -> tuple[int, dict[str, object]]:
        token = form.get("token", "")
        with self._lock:
            self.calls["introspect"] += 1
            self.introspected[token] += 1
            expiry = self.expiry.get(token)
            if expiry is None or token in self.revoked or expiry <= time.time():
                return 200, {"active": False}
            return 200, {"active": True, "exp": int(expiry), "scope": READ_ONLY}

    def grant(self, token: str, lifetime: float = 600) -> None:
        """Make `token` one the introspection endpoint calls active (as if issued)."""
        with self._lock:
            self.issued.append(token)
            self.expiry[token] = time.time() + lifetime

    def revoke(self, token: str) -> None:
        with self._lock:
            self.revoked.add(token)

    def valid(self, token: str) -> bool:
        """What a storage service would say of `token` (issued, live, not revoked)."""
        with self._lock:
            expiry = self.expiry.get(token)
            return expiry is not None and expiry > time.time() and token not in self.revoked


def sa_environment(monkeypatch, tmp_path: Path, key_file: Path) -> None:
    """ADC finds exactly this key file: no gcloud config, no metadata server, no emulator."""
    gcloud = tmp_path / "gcloud-config"
    gcloud.mkdir(exist_ok=True)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(gcloud))
    monkeypatch.setenv("NO_GCE_CHECK", "true")
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)


class BidiBlobServer:
    """`BidiReadObject` over a table of blobs, behind a bearer-token check: the gRPC side
    of a storage service that wants credentials (the store's own gRPC listener does not
    check tokens). Records the `authorization` each call carried."""

    def __init__(self, blobs: dict[str, tuple[int, bytes]], accept, *, refuse=None) -> None:
        self.blobs = blobs  # object name -> (generation, bytes)
        self.accept = accept  # token -> bool
        self.refuse = refuse  # a status code every call gets, e.g. UNIMPLEMENTED
        self.seen: list[str | None] = []
        self.served = 0  # calls that got past the token check
        self.server = grpc.server(ThreadPoolExecutor(16, thread_name_prefix="test-bidi"))
        handler = grpc.method_handlers_generic_handler(
            "google.storage.v2.Storage",
            {
                "BidiReadObject": grpc.stream_stream_rpc_method_handler(
                    self._serve,
                    request_deserializer=pb.BidiReadObjectRequest.FromString,
                    response_serializer=pb.BidiReadObjectResponse.SerializeToString,
                )
            },
        )
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.target = f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop(0).wait(5)

    def _serve(self, requests, context):
        auth = dict(context.invocation_metadata()).get("authorization")
        self.seen.append(auth)
        if self.refuse is not None:
            context.abort(self.refuse, "bidi reads are not supported for this bucket")
        token = auth.removeprefix("Bearer ") if auth and auth.startswith("Bearer ") else None
        if token is None or not self.accept(token):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid credentials")
        self.served += 1
        first = next(requests)
        spec = first.read_object_spec
        if spec.object not in self.blobs:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no object {spec.object}")
        generation, data = self.blobs[spec.object]
        if spec.generation and spec.generation != generation:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no generation {spec.generation}")
        yield pb.BidiReadObjectResponse(
            metadata=pb.Object(
                name=spec.object, bucket=spec.bucket, generation=generation, size=len(data)
            ),
            read_handle=pb.BidiReadHandle(handle=b"h"),
        )
        for request in itertools.chain([first], requests):
            for r in request.read_ranges:
                offset = r.read_offset
                end = offset + r.read_length if r.read_length else len(data)
                while True:
                    n = min(1 << 20, end - offset)
                    chunk = data[offset : offset + n]
                    yield pb.BidiReadObjectResponse(
                        object_data_ranges=[
                            pb.ObjectRangeData(
                                checksummed_data=pb.ChecksummedData(
                                    content=chunk, crc32c=crc32c.crc32c(chunk)
                                ),
                                read_range=pb.ReadRange(
                                    read_offset=offset, read_length=n, read_id=r.read_id
                                ),
                                range_end=offset + n == end,
                            )
                        ]
                    )
                    offset += n
                    if offset >= end:
                        break
