"""The SNI reader on real ClientHellos (Python's ssl and `openssl s_client`, captured from a plain socket), split
across records and TCP segments, truncated, and on hostile bytes: it returns a name, None, or raises its own
error, never anything else."""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filterd.tls.clienthello import MAX_BYTES, ClientHelloError, Incomplete, server_name


def captured(connect: Callable[[int], None]) -> bytes:
    """The first bytes a TLS client sends to a plain TCP server: its ClientHello (the handshake then fails)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        client = threading.Thread(target=connect, args=(port,), daemon=True)
        client.start()
        conn, _ = server.accept()
        with conn:
            conn.settimeout(5)
            data = b""
            while True:  # until the first record is whole (a ClientHello fits in one for these clients)
                data += conn.recv(65536)
                if len(data) >= 5 and len(data) >= 5 + int.from_bytes(data[3:5], "big"):
                    break
        client.join(10)
    return data


def python_hello(name: str | None, maximum: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED) -> bytes:
    def connect(port: int) -> None:
        context = ssl.create_default_context()
        context.check_hostname = name is not None
        context.maximum_version = maximum
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, contextlib.suppress(OSError):
            context.wrap_socket(raw, server_hostname=name)

    return captured(connect)


def openssl_hello(*args: str) -> bytes:
    def connect(port: int) -> None:
        subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=10,
            check=False,
        )

    return captured(connect)


def records(hello: bytes, sizes: list[int]) -> bytes:
    """The same ClientHello re-framed as several handshake records of these sizes (the rest in the last)."""
    message = hello[5 : 5 + int.from_bytes(hello[3:5], "big")]
    out = b""
    for size in [*sizes, len(message)]:
        chunk, message = message[:size], message[size:]
        if chunk:
            out += bytes((22, 3, 1)) + len(chunk).to_bytes(2, "big") + chunk
    return out


@pytest.fixture(scope="module")
def hello() -> bytes:
    return python_hello("omegle.com")


def test_real_client_hellos(hello: bytes) -> None:
    assert server_name(hello) == b"omegle.com"
    assert server_name(python_hello("www.uhmegle.com", ssl.TLSVersion.TLSv1_2)) == b"www.uhmegle.com"
    assert server_name(python_hello(None)) is None  # https://127.0.0.1/: no name sent


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_openssl_s_client_hellos() -> None:
    assert server_name(openssl_hello("-servername", "omegle.com")) == b"omegle.com"
    assert server_name(openssl_hello("-servername", "\u00e9.omegle.com")) == "\u00e9.omegle.com".encode()
    assert server_name(openssl_hello("-noservername")) is None
    assert server_name(openssl_hello("-servername", "omegle.com", "-tls1_2")) == b"omegle.com"


def test_every_prefix_asks_for_more_and_says_how_much(hello: bytes) -> None:
    for end in range(len(hello)):
        with pytest.raises(Incomplete) as more:
            server_name(hello[:end])
        assert end < more.value.needed <= len(hello)


def test_a_hello_split_across_records(hello: bytes) -> None:
    split = records(hello, [1, 3, 40, 200])
    assert server_name(split) == b"omegle.com"
    for end in range(len(split)):
        with pytest.raises(Incomplete):
            server_name(split[:end])
    assert server_name(split + b"\x17\x03\x03 next") == b"omegle.com"  # what follows is the handshake's business


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"GET / HTTP/1.1\r\n", "not a TLS handshake record"),
        (b"\x16\x02", "record version"),
        (b"\x16\x03\x01\x00\x00", "a handshake record of 0 bytes"),
        (b"\x16\x03\x01\x40\x01", "a handshake record of 16385 bytes"),
        (b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", "not a ClientHello"),
        (b"\x16\x03\x01\x00\x04\x01\x01\x00\x00", "a ClientHello of 65536 bytes"),
        (b"\x16\x03\x01\x00\x06\x01\x00\x00\x02\x03\x00", "SSL 3 or older"),
        (b"\x16\x03\x01\x00\x06\x01\x00\x00\x02\x03\x03", "random runs past its end"),
    ],
)
def test_what_is_no_client_hello(data: bytes, why: str) -> None:
    with pytest.raises(ClientHelloError, match=why) as refused:
        server_name(data)
    assert not isinstance(refused.value, Incomplete)


def test_a_hello_in_tiny_records_is_refused_past_the_bound(hello: bytes) -> None:
    message = hello[5:]
    tiny = b"".join(bytes((22, 3, 1, 0, 1, byte)) for byte in message)  # 6 bytes on the wire per byte: legal
    assert server_name(tiny) == b"omegle.com"
    padded = bytes((22, 3, 1, 0, 4)) + b"\x01" + (MAX_BYTES).to_bytes(3, "big")  # a ClientHello of 17 KiB
    with pytest.raises(ClientHelloError, match="ClientHello of"):
        server_name(padded)


def sni_extension(entries: bytes) -> bytes:
    return b"\x00\x00" + (len(entries) + 2).to_bytes(2, "big") + len(entries).to_bytes(2, "big") + entries


def build(extensions: bytes | None) -> bytes:
    body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    if extensions is not None:
        body += len(extensions).to_bytes(2, "big") + extensions
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(message).to_bytes(2, "big") + message


def host(name: bytes, kind: int = 0) -> bytes:
    return bytes((kind,)) + len(name).to_bytes(2, "big") + name


@pytest.mark.parametrize(
    ("extensions", "expected"),
    [
        (None, None),  # no extensions at all
        (b"", None),
        (b"\x00\x17\x00\x00" + sni_extension(host(b"a.test")), b"a.test"),
        (sni_extension(host(b"a" * 255)), b"a" * 255),
        (sni_extension(host(b"a" * 256)), ClientHelloError),  # longer than a host name may be (OpenSSL: too)
        (sni_extension(host(b"a\0.test")), ClientHelloError),
        (sni_extension(host(b"")), ClientHelloError),
        (sni_extension(host(b"a.test", kind=1)), ClientHelloError),
        (sni_extension(host(b"a.test") + host(b"b.test")), ClientHelloError),
        (sni_extension(host(b"a.test")) * 2, ClientHelloError),
        (b"\x00\x00\x00\x00", ClientHelloError),  # an empty server_name: only a ServerHello's
        (b"\x00\x17\x00\x05\x00", ClientHelloError),  # an extension longer than what holds it
    ],
)
def test_the_server_name_extension_as_openssl_reads_it(extensions: bytes | None, expected: object) -> None:
    if expected is ClientHelloError:
        with pytest.raises(ClientHelloError):
            server_name(build(extensions))
    else:
        assert server_name(build(extensions)) == expected


def check(data: bytes) -> None:
    """The property: a name that is in the input, None, or the module's own error; never anything else."""
    try:
        found = server_name(data)
    except Incomplete as more:
        assert len(data) < more.needed <= MAX_BYTES
    except ClientHelloError:
        pass
    else:
        assert found is None or (0 < len(found) <= 255 and found in data)


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=600))
def test_garbage_never_raises_anything_else(data: bytes) -> None:
    check(data)
    check(b"\x16\x03\x01" + data)
    check(b"\x16\x03\x01" + len(data).to_bytes(2, "big") + data)


@settings(max_examples=3000, deadline=None)
@given(st.data())
def test_a_real_hello_mutated_never_raises_anything_else(hello: bytes, data: st.DataObject) -> None:
    mutated = bytearray(hello)
    for _ in range(data.draw(st.integers(1, 8))):
        mutated[data.draw(st.integers(0, len(mutated) - 1))] = data.draw(st.integers(0, 255))
    end = data.draw(st.integers(0, len(mutated)))
    check(bytes(mutated[:end]))
    check(bytes(mutated))


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.integers(1, 300), max_size=10), st.binary(min_size=1, max_size=60).filter(lambda n: b"\0" not in n))
def test_any_framing_of_any_name_is_read(sizes: list[int], name: bytes) -> None:
    hello = build(b"\x00\x2b\x00\x03\x02\x03\x04" + sni_extension(host(name)))
    assert server_name(records(hello, sizes)) == name
