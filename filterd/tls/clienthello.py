"""The server name (SNI) in a TLS ClientHello, read from the bytes a client sent before the handshake starts.

Pure and strictly bounds-checked: `server_name(data)` returns the name's bytes, or None for a ClientHello without
one, or raises `Incomplete` (the bytes so far are a valid beginning: wait for `needed` bytes in all) or
`ClientHelloError` (not a TLS ClientHello filterd's TLS library would accept: close the connection). It never
raises anything else, whatever the bytes (a hypothesis test feeds it garbage).

The HTTPS block page peeks at these bytes (they stay in the socket for the TLS handshake) so that a certificate
that must be minted is minted in a worker thread before the handshake, not in OpenSSL's SNI callback on the event
loop. Where this parser is stricter or looser than OpenSSL, the handshake that follows still decides; the rules
kept here are OpenSSL's for what reaches its SNI callback (RFC 8446 4.1.2, RFC 6066 3): handshake records of TLS
major version 3, a ClientHello of legacy_version TLS 1.0 or later (TLS 1.3 sends 1.2; OpenSSL refuses SSL 3 even
when a supported_versions extension offers more), possibly split across several records, and a server_name
extension of exactly one host_name of 1 to 255 bytes without a zero byte.
"""

from __future__ import annotations

from filterd.errors import FilterdError

#: Record content type and handshake message type (RFC 8446 5.1, 4).
_HANDSHAKE = 22
_CLIENT_HELLO = 1
#: The largest plaintext record (2^14) and the largest ClientHello kept; real ones are under 2 KiB (a post-quantum
#: key share included), so a bigger one is refused rather than waited for.
MAX_RECORD = 16384
MAX_HELLO = 16384
#: The most bytes read before a ClientHello must be complete (its records' headers included).
MAX_BYTES = MAX_HELLO + 1024
_SERVER_NAME = 0
_HOST_NAME = 0
_MAX_NAME = 255


class ClientHelloError(FilterdError):
    """The bytes are not the beginning of a TLS ClientHello that can be served."""


class Incomplete(ClientHelloError):
    """A valid beginning: `needed` bytes in all are the least that can tell more."""

    def __init__(self, needed: int) -> None:
        self.needed = needed
        super().__init__(f"incomplete ClientHello: {needed} bytes needed")


class _Reader:
    """Reads a bytes value front to back; every read checks that the bytes are there."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or n > self.left():
            raise ClientHelloError(f"ClientHello: {what} runs past its end")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def number(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "big")

    def vector(self, size: int, what: str) -> bytes:
        """A length-prefixed field (`size` bytes of length)."""
        return self.take(self.number(size, what), what)


def handshake_message(data: bytes) -> bytes:
    """The ClientHello message's body, gathered from the handshake records at the start of `data`."""
    message = b""
    pos = 0
    while True:
        header = data[pos : pos + 5]
        if header[:1] and header[0] != _HANDSHAKE:
            raise ClientHelloError("not a TLS handshake record")
        if header[1:2] and header[1] != 3:
            raise ClientHelloError("not TLS (record version)")
        if len(header) < 5:
            raise _incomplete(pos + 5)
        length = int.from_bytes(header[3:5], "big")
        if length == 0 or length > MAX_RECORD:
            raise ClientHelloError(f"a handshake record of {length} bytes")
        body = data[pos + 5 : pos + 5 + length]
        if message == b"" and body[:1] and body[0] != _CLIENT_HELLO:
            raise ClientHelloError("the first handshake message is not a ClientHello")
        if len(body) < length:
            raise _incomplete(pos + 5 + length)
        message += body
        pos += 5 + length
        if len(message) >= 4:
            size = int.from_bytes(message[1:4], "big")
            if size > MAX_HELLO:
                raise ClientHelloError(f"a ClientHello of {size} bytes")
            if len(message) >= 4 + size:
                return message[4 : 4 + size]


def _incomplete(needed: int) -> ClientHelloError:
    if needed > MAX_BYTES:
        return ClientHelloError(f"a ClientHello longer than {MAX_BYTES} bytes")
    return Incomplete(needed)


def server_name(data: bytes) -> bytes | None:
    """The SNI host name of the ClientHello at the start of `data` (as sent: not yet checked as a host name), or
    None when it names none; `Incomplete` or `ClientHelloError` otherwise (see the module's docstring)."""
    hello = _Reader(handshake_message(data))
    version = hello.number(2, "legacy_version")
    if version >> 8 != 3 or version <= 0x0300:  # TLS 1.0 or later (OpenSSL then decides, by supported_versions too)
        raise ClientHelloError("a ClientHello of SSL 3 or older")
    hello.take(32, "random")
    if len(hello.vector(1, "legacy_session_id")) > 32:
        raise ClientHelloError("ClientHello: a session id longer than 32 bytes")
    suites = hello.vector(2, "cipher_suites")
    if not suites or len(suites) % 2:
        raise ClientHelloError("ClientHello: no cipher suites, or an odd length")
    if not hello.vector(1, "compression_methods"):
        raise ClientHelloError("ClientHello: no compression methods")
    if not hello.left():
        return None  # no extensions at all (TLS 1.2 allows it)
    extensions = _Reader(hello.vector(2, "extensions"))
    if hello.left():
        raise ClientHelloError("ClientHello: bytes after the extensions")
    found: bytes | None = None
    seen = False
    while extensions.left():
        kind = extensions.number(2, "extension type")
        body = extensions.vector(2, "extension")
        if kind != _SERVER_NAME:
            continue
        if seen:
            raise ClientHelloError("ClientHello: two server_name extensions")
        seen = True
        found = _host_name(body)
    return found


def _host_name(extension: bytes) -> bytes:
    names = _Reader(extension)
    entries = _Reader(names.vector(2, "server_name_list"))
    if names.left() or not entries.left():
        raise ClientHelloError("ClientHello: a malformed server_name extension")
    if entries.number(1, "name_type") != _HOST_NAME:
        raise ClientHelloError("ClientHello: a server name that is not a host name")
    name = entries.vector(2, "host_name")
    if entries.left():
        raise ClientHelloError("ClientHello: more than one server name")
    if not name or len(name) > _MAX_NAME or b"\0" in name:
        raise ClientHelloError("ClientHello: an empty, long or NUL-bearing host name")
    return name
