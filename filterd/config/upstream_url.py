"""Pure: `tls://NAME[:PORT][@ADDRESS]` and `https://NAME[:PORT]/PATH[@ADDRESS]` -> EncryptedUpstream.

NAME is what the certificate is verified for (never skipped; an IPv4 NAME is checked against the certificate's
IP addresses), ADDRESS pins where to connect (an IP; without it NAME is looked up through `dns.bootstrap`).
A plain `host[:port]` is not handled here (`parse_endpoint`).
"""

from __future__ import annotations

import ipaddress
import re

from filterd.config.schema import EncryptedUpstream
from filterd.dns.names import is_address

SCHEMES = {"tls": 853, "https": 443}
_NAME_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9])?)(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9])?)*$")
_PATH_RE = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:%/-]*$")


def is_encrypted_url(text: str) -> bool:
    return text.strip().lower().startswith(("tls://", "https://"))


def parse_upstream_url(text: str) -> EncryptedUpstream:
    """ValueError says what is wrong, e.g. "'tls://' needs a server name: tls://dns.quad9.net@9.9.9.9"."""
    text = text.strip()
    scheme, _, rest = text.partition("://")
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"{text!r}: the scheme must be tls:// or https://")
    example = "tls://dns.quad9.net@9.9.9.9" if scheme == "tls" else "https://dns.quad9.net/dns-query@9.9.9.9"
    pin = ""
    if "@" in rest:
        rest, _, pin_text = rest.rpartition("@")
        pin_text = pin_text.removeprefix("[").removesuffix("]")
        try:
            pin = str(ipaddress.ip_address(pin_text))
        except ValueError:
            raise ValueError(f"{text!r}: {pin_text!r} after @ is not an IP address (e.g. {example})") from None
    hostport, slash, path = rest.partition("/")
    path = slash + path
    if scheme == "tls" and path:
        raise ValueError(f"{text!r}: a tls:// upstream has no path (e.g. {example})")
    if scheme == "https":
        if not path or path == "/":
            raise ValueError(f"{text!r}: an https:// upstream needs its path, usually /dns-query (e.g. {example})")
        if "?" in path or "#" in path or not _PATH_RE.match(path):
            raise ValueError(f"{text!r}: {path!r} is not a plain URL path (no query string: {example})")
    name, colon, port_text = hostport.partition(":")
    name = name.lower().rstrip(".")
    if not name:
        raise ValueError(f"{text!r} needs a server name to verify the certificate for (e.g. {example})")
    if is_address(name):  # tls://1.1.1.1: verified against the certificate's IP addresses (a pin of its own)
        pin = pin or name
    elif not _NAME_RE.match(name):
        raise ValueError(f"{text!r}: {name!r} is not a host name (e.g. {example})")
    port = SCHEMES[scheme]
    if colon:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"{text!r}: port {port_text!r} is not a number in 1-65535")
        port = int(port_text)
    return EncryptedUpstream(pin, port, scheme=scheme, server_name=name, path=path)
