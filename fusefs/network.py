"""How this process reaches other hosts over HTTP: the CAs it trusts and the proxy the
environment names for each origin.

One policy for every client of the mount — the hub client (httpx), the probes
(`hub/http1.py`), the ranged GETs (`data/http_conn.py`) and the gRPC channels (given
their proxy explicitly, `grpc_channel_options`) — so that a machine behind a proxy, or
with its own CA, lists, probes and reads alike.

Proxies come from `HTTP_PROXY` / `HTTPS_PROXY` / `ALL_PROXY` (the lower-case name wins
when both are set) and `NO_PROXY`, read by the standard library's rules: a `NO_PROXY`
entry matches a host name, a domain suffix (`.example.com` or `example.com`), an IP
literal, or `*` for every host. A proxy is an `http://` one (the form most sites run);
its `user:password` goes to the proxy only, as `Proxy-Authorization`, never to the
origin. HTTPS origins are reached through a `CONNECT` tunnel, so the proxy sees host
names but no request or byte; plain-HTTP requests go to the proxy in absolute form.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import ssl
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import certifi

GRPC_OWN_VARIABLES = ("grpc_proxy", "no_grpc_proxy")  # grpcio reads them in lower case only


class NetworkSettingError(ValueError):
    """A variable of the environment names what cannot be used; one line for a person."""


class ProxyError(NetworkSettingError):
    """The environment names a proxy this client cannot use."""


@dataclass(frozen=True)
class Proxy:
    host: str
    port: int
    authorization: str | None = None  # the Proxy-Authorization value, if credentials
    url: str = field(default="", compare=False)  # as given, credentials included

    def __repr__(self) -> str:  # never the credentials, in a log or a traceback
        return f"Proxy({self.host}:{self.port}{', with credentials' if self.authorization else ''})"

    @property
    def authority(self) -> str:
        return host_port(self.host, self.port)


def host_port(host: str, port: int) -> str:
    """HOST:PORT as dialled and as written in a CONNECT line: an IPv6 address bracketed."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class Route:
    """How requests to one origin go: straight to it, or through a proxy — over a
    `CONNECT` tunnel for HTTPS, or with absolute-form targets for plain HTTP."""

    proxy: Proxy | None = None
    prefix: str = ""  # before an origin-form target: `http://host:port` to a proxy
    headers: tuple[tuple[str, str], ...] = ()  # what a proxy wants on each request

    @property
    def tunnel(self) -> bool:
        return self.proxy is not None and not self.prefix

    @classmethod
    def to(cls, scheme: str, host: str, host_header: str) -> Route:
        """The route the environment gives to `scheme://host_header` (ProxyError for a
        proxy that cannot be used)."""
        proxy = proxy_for(scheme, host)
        if proxy is None or scheme == "https":
            return cls(proxy)  # a tunnel: the proxy authenticates the CONNECT only
        auth = (("Proxy-Authorization", proxy.authorization),) if proxy.authorization else ()
        return cls(proxy, f"http://{host_header}", auth)


def proxy_for(scheme: str, host: str) -> Proxy | None:
    """The proxy to reach `scheme://host` through, or None to connect directly.

    ProxyError when the variable that applies names a proxy that cannot be used."""
    proxies = urllib.request.getproxies_environment()
    url = proxies.get(scheme) or proxies.get("all")
    if not url:
        return None
    if _bypassed(host, proxies.get("no", "")):
        return None
    return parse_proxy(url, f"{scheme}_proxy")


def check_environment() -> None:
    """NetworkSettingError, at start, for a proxy or CA variable that could never be used."""
    for scheme, url in urllib.request.getproxies_environment().items():
        if scheme in ("http", "https", "all") and url:
            parse_proxy(url, f"{scheme}_proxy")
    cafile, capath = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
    if cafile:
        try:
            ssl.create_default_context(cafile=cafile)
        except (OSError, ssl.SSLError) as e:
            raise NetworkSettingError(
                f"SSL_CERT_FILE: no certificates can be read from {cafile} ({e})"
            ) from None
    if capath and not os.path.isdir(capath):
        raise NetworkSettingError(f"SSL_CERT_DIR: {capath} is not a directory")


def describe_proxies() -> str | None:
    """One line for the log saying where connections go, when a proxy variable is set
    (credentials left out); None when every connection goes direct."""
    proxies = urllib.request.getproxies_environment()
    used = []
    for scheme in ("http", "https", "all"):
        if url := proxies.get(scheme):
            used.append(f"{scheme} via {parse_proxy(url, f'{scheme}_proxy').authority}")
    if not used:
        return None
    no_proxy = proxies.get("no", "")
    return "proxy: " + ", ".join(used) + (f"; direct: {no_proxy}" if no_proxy else "")


def parse_proxy(url: str, variable: str) -> Proxy:
    if "://" not in url:
        url = "http://" + url  # `host:port`, as curl and httpx read it
    try:
        parts = urlsplit(url)
        port = parts.port or 80
    except ValueError as e:
        raise ProxyError(f"{variable}: not a proxy URL ({e})") from None
    if parts.scheme != "http":
        raise ProxyError(
            f"{variable}: {parts.scheme}:// proxies are not supported (use an http:// proxy)"
        )
    if not parts.hostname:
        raise ProxyError(f"{variable}: no proxy host in the URL")
    authorization = None
    if parts.username is not None:
        user_password = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(user_password.encode()).decode("ascii")
    return Proxy(parts.hostname, port, authorization, url)


def grpc_channel_options(endpoint: str, tls: bool) -> list[tuple[str, Any]]:
    """The channel options that route a gRPC channel to HOST:PORT by this policy (grpcio
    alone would read only the lower-case variables, and apply its own NO_PROXY rules).
    Where `grpc_proxy` or `no_grpc_proxy` is set, gRPC's own variables, grpcio decides."""
    if any(os.environ.get(name) for name in GRPC_OWN_VARIABLES):
        return []
    host = endpoint.rpartition(":")[0].strip("[]") if ":" in endpoint else endpoint
    proxy = proxy_for("https" if tls else "http", host)
    if proxy is None:
        return [("grpc.enable_http_proxy", 0)]
    return [("grpc.http_proxy", proxy.url)]


def _bypassed(host: str, no_proxy: str) -> bool:
    """Whether NO_PROXY sends `host` direct. Names match by the standard library's rules;
    an IP address matches an entry that is the same address (any spelling of it)."""
    if not no_proxy:
        return False
    if no_proxy.strip() == "*":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        # Public and documented for urllib's own use, but not in the type stubs.
        bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
        return bool(bypass(host, {"no": no_proxy}))
    for entry in no_proxy.split(","):
        try:
            if ipaddress.ip_address(entry.strip().strip("[]")) == address:
                return True
        except ValueError:
            continue
    return False


def grpc_root_certificates() -> bytes | None:
    """The CAs for TLS gRPC channels, by the rule of `trusted_context`: the PEM file
    `SSL_CERT_FILE` names, when set; else None, grpcio's own bundle (Mozilla's roots, as
    certifi's). gRPC's own `GRPC_DEFAULT_SSL_ROOTS_FILE_PATH` wins when set; a directory
    (`SSL_CERT_DIR`) is something grpcio cannot be given."""
    cafile = os.environ.get("SSL_CERT_FILE")
    if not cafile or os.environ.get("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"):
        return None
    with open(cafile, "rb") as f:
        return f.read()


def trusted_context() -> ssl.SSLContext:
    """The CAs the hub client (httpx) trusts, so that every client agrees: the files named
    by `SSL_CERT_FILE` / `SSL_CERT_DIR` when set, else certifi's bundle (present whether
    or not the machine has its own CA certificates installed)."""
    cafile, capath = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
    if cafile or capath:
        return ssl.create_default_context(cafile=cafile or None, capath=capath or None)
    return ssl.create_default_context(cafile=certifi.where())
