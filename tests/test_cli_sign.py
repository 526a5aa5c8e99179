"""``lbproxy sign`` as an operator runs it: the headers it prints verify, alone and sent by curl."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lbproxy.signing import SignatureError, VerifiedApp, Verifier

ROOT = Path(__file__).resolve().parent.parent
KEY, SECRET = "app-key-1", "s3cret"
APPS = {KEY: ("orders", SECRET.encode())}
Headers = list[tuple[bytes, bytes]]


def lbproxy(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lbproxy", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def printed_headers(*args: str, env: dict[str, str] | None = None) -> Headers:
    result = lbproxy("sign", *args, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    headers = []
    for line in result.stdout.splitlines():
        name, sep, value = line.partition(": ")
        assert sep and name and value, line
        headers.append((name.encode(), value.encode()))
    return headers


def test_printed_headers_verify() -> None:
    headers = printed_headers(
        "--key",
        KEY,
        "--secret",
        SECRET,
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/json",
        "-H",
        "X-Trace:  t-1 ",
        "--data",
        '{"n": 1}',
        "http://gw.example:8080/orders/7?b=2&a=1",
    )
    assert [name for name, _ in headers] == [
        b"Content-Type",
        b"X-Trace",
        b"Accept",
        b"Content-MD5",
        b"X-Ca-Key",
        b"X-Ca-Timestamp",
        b"X-Ca-Nonce",
        b"X-Ca-Signature-Headers",
        b"X-Ca-Signature",
    ]
    assert dict(headers)[b"Accept"] == b"*/*"
    assert dict(headers)[b"X-Ca-Signature-Headers"] == b"x-ca-key,x-ca-nonce,x-ca-timestamp,x-trace"
    target = b"/orders/7?b=2&a=1"
    verified = Verifier(APPS).verify(b"PUT", target, headers, time.time())
    assert verified == VerifiedApp("orders", KEY)
    with pytest.raises(SignatureError, match="signature mismatch"):
        Verifier(APPS).verify(b"POST", target, headers, time.time())


def test_secret_from_the_environment_and_curls_defaults() -> None:
    headers = printed_headers(
        "--key",
        KEY,
        "--secret-env",
        "APP_SECRET",
        "--data",
        "a=1",
        "/form",
        env={"APP_SECRET": SECRET},
    )
    assert dict(headers)[b"Content-Type"] == b"application/x-www-form-urlencoded"
    # With --data and no -X the method is POST, as curl's.
    assert Verifier(APPS).verify(b"POST", b"/form", headers, time.time()).name == "orders"


def test_a_wrong_secret_does_not_verify() -> None:
    headers = printed_headers("--key", KEY, "--secret", "guess", "/p")
    with pytest.raises(SignatureError, match="signature mismatch"):
        Verifier(APPS).verify(b"GET", b"/p", headers, time.time())


def capture_one_request() -> tuple[int, threading.Thread, list[bytes]]:
    """A server on 127.0.0.1:0 that keeps one raw request head and answers 204."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    received: list[bytes] = []

    def serve() -> None:
        with server, server.accept()[0] as conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            received.append(data)
            conn.sendall(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return port, thread, received


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_the_help_recipe_with_curl_verifies() -> None:
    port, thread, received = capture_one_request()
    url = f"http://127.0.0.1:{port}/items/1?z=9&a=%20x"
    script = (
        'mapfile -t H < <("$PYTHON" -m lbproxy sign --key "$KEY" --secret-env APP_SECRET '
        '-H "X-Trace: t" --data "$BODY" "$URL") && '
        'curl -sS --max-time 10 "${H[@]/#/-H}" --data "$BODY" "$URL"'
    )
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "KEY": KEY,
        "APP_SECRET": SECRET,
        "URL": url,
        "BODY": "q=1&r=2",
    }
    result = subprocess.run(
        ["bash", "-c", script],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    thread.join(10)
    head = received[0].split(b"\r\n\r\n")[0].split(b"\r\n")
    method, target, _ = head[0].split(b" ")
    headers = [(n, v.strip()) for n, _, v in (line.partition(b":") for line in head[1:])]
    assert Verifier(APPS).verify(method, target, headers, time.time()).name == "orders"
    assert (method, target) == (b"POST", b"/items/1?z=9&a=%20x")


def test_help_names_the_environment_option() -> None:
    result = lbproxy("sign", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "--secret-env NAME read the secret from the environment variable NAME" in text
    assert "need not go on a command line" in text


@pytest.mark.parametrize(
    ("args", "env", "complaint"),
    [
        (("--secret", "s", "/p"), {}, "the following arguments are required: --key"),
        (("--key", "k", "/p"), {}, "one of the arguments --secret --secret-env is required"),
        (("--key", "k", "--secret", "s"), {}, "the following arguments are required: URL"),
        (
            ("--key", "k", "--secret", "s", "--secret-env", "E", "/p"),
            {},
            "argument --secret-env: not allowed with argument --secret",
        ),
        (
            ("--key", "k", "--secret-env", "LBPROXY_TEST_UNSET", "/p"),
            {},
            "--secret-env: the environment variable LBPROXY_TEST_UNSET is not set",
        ),
        (
            ("--key", "k", "--secret-env", "EMPTY", "/p"),
            {"EMPTY": ""},
            "--secret-env: the environment variable EMPTY is not set",
        ),
        (
            ("--key", "k", "--secret", "s", "-H", "NoColon", "/p"),
            {},
            "-H 'NoColon': expected 'Name: value' with a non-empty value",
        ),
        (
            ("--key", "k", "--secret", "s", "-H", "X-Empty:", "/p"),
            {},
            "-H 'X-Empty:': expected 'Name: value' with a non-empty value",
        ),
        (
            ("--key", "k", "--secret", "s", "-H", "X-Ca-Nonce: mine", "/p"),
            {},
            "header X-Ca-Nonce is set by sign()",
        ),
        (
            ("--key", "k", "--secret", "s", "-H", "X-A: 1", "-H", "x-a: 2", "/p"),
            {},
            "header x-a given twice",
        ),
    ],
    ids=[
        "no-key",
        "no-secret",
        "no-url",
        "both-secrets",
        "unset-env",
        "empty-env",
        "header-without-colon",
        "header-without-value",
        "header-set-by-sign",
        "header-twice",
    ],
)
def test_usage_errors_exit_2(
    args: tuple[str, ...], env: dict[str, str], complaint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LBPROXY_TEST_UNSET", raising=False)
    result = lbproxy("sign", *args, env=env)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("usage: lbproxy sign")
    assert result.stderr.splitlines()[-1] == f"lbproxy sign: error: {complaint}"
