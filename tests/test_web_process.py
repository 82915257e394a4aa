"""``newsletter serve`` and ``newsletter run`` as real processes under a path prefix:
where they answer, what a proxy that strips the prefix needs, which headers go out,
and what raw malformed HTTP leaves in the server's log (one line, never a traceback)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, free_port
from fixtures_subscribers import SECRET


def environment(content_dir: Path, tmp_path: Path, base_url: str, **extra: str) -> dict:
    return {**os.environ, "NEWSLETTER_CONTENT": str(content_dir), "NEWSLETTER_SECRET": SECRET,
            "DATABASE_URL": f"sqlite:///{tmp_path / 'process.db'}", "NEWSLETTER_BASE_URL": base_url,
            "NEWSLETTER_PUBLIC_DIR": str(tmp_path / "public"), "NEWSLETTER_VAR_DIR": str(tmp_path / "var"),
            "NEWSLETTER_OUTBOX_DIR": str(tmp_path / "outbox"), **extra}


@contextmanager
def process(args: list[str], env: dict, health: str, log_path: Path):
    """Start ``newsletter ARGS``, wait until ``health`` answers 200, stop it with SIGINT."""
    log = open(log_path, "w+")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                if httpx.get(health, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"newsletter {args[0]} did not answer {health}:\n{log.read()}")
            time.sleep(0.1)
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def raw(port: int, data: bytes, *, close_after: float = 0.5) -> bytes:
    """Send bytes as they are, read what comes back until the server closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        s.settimeout(close_after)
        answer = b""
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except (socket.timeout, ConnectionResetError):
            pass
    return answer


FORM = b"Content-Type: application/x-www-form-urlencoded\r\n"
MALFORMED = {
    "bad chunk size": b"POST /newsletter/subscribe HTTP/1.1\r\nHost: x\r\n" + FORM
                      + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "chunk longer than said": b"POST /newsletter/unsubscribe/abc HTTP/1.1\r\nHost: x\r\n" + FORM
                              + b"Transfer-Encoding: chunked\r\n\r\n5\r\nabcdefghij\r\n0\r\n\r\n",
    "chunked, then gone": b"POST /newsletter/subscribe HTTP/1.1\r\nHost: x\r\n" + FORM
                          + b"Transfer-Encoding: chunked\r\n\r\n10\r\nemail=a",
    "short Content-Length, then gone": b"POST /newsletter/subscribe HTTP/1.1\r\nHost: x\r\n" + FORM
                                       + b"Content-Length: 100\r\n\r\nemail=a",
    "chunked preferences, bad": b"POST /newsletter/preferences/abc HTTP/1.1\r\nHost: x\r\n" + FORM
                                + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n",
    "both framings": b"POST /newsletter/subscribe HTTP/1.1\r\nHost: x\r\n" + FORM
                     + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "oversized chunked": b"POST /newsletter/subscribe HTTP/1.1\r\nHost: x\r\n" + FORM
                         + b"Transfer-Encoding: chunked\r\n\r\n" + b"".join([b"4000\r\n" + b"a" * 0x4000 + b"\r\n"] * 6)
                         + b"0\r\n\r\n",
    "oversized Content-Length": b"POST /newsletter/subscribe HTTP/1.1\r\nHost: x\r\n" + FORM
                                + b"Content-Length: 999999\r\n\r\nemail=a",
}


def test_malformed_requests_leave_no_traceback_in_the_log(content_dir, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}/newsletter"
    log_path = tmp_path / "serve.log"
    env = environment(content_dir, tmp_path, base, NEWSLETTER_SUBSCRIBE_RATE_PER_MINUTE="0")  # every body is read
    with process(["serve", "--host", "127.0.0.1", "--port", str(port)], env, f"{base}/healthz", log_path):
        answers = {name: raw(port, data) for name, data in MALFORMED.items()}
        for _ in range(3):  # and again, in case a failure shows only on a reused worker
            for data in MALFORMED.values():
                raw(port, data, close_after=0.2)
        time.sleep(0.5)
        assert httpx.get(f"{base}/healthz", timeout=5).text == "ok"  # still serving
    log = log_path.read_text()
    assert "Traceback" not in log, log
    assert "LocalProtocolError" not in log and "ClientDisconnect" not in log, log
    assert "Exception in ASGI application" not in log and "ERROR" not in log, log
    assert "429" not in log  # the bodies were all read, not turned away by the rate limit
    for name in ("oversized chunked", "oversized Content-Length"):
        head = answers[name].split(b"\r\n\r\n", 1)[0].lower()
        assert head.startswith(b"http/1.1 413") and b"content-type: text/html" in head, (name, answers[name][:300])


def test_serve_answers_under_base_urls_path(content_dir, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}/newsletter"
    with process(["serve", "--host", "127.0.0.1", "--port", str(port)], environment(content_dir, tmp_path, base),
                 f"{base}/healthz", tmp_path / "serve.log"):
        page = httpx.get(f"{base}/subscribe", timeout=5)
        assert page.status_code == 200 and "server" not in page.headers
        assert httpx.get(f"http://127.0.0.1:{port}/subscribe", timeout=5).status_code == 404


def test_serve_root_path_for_a_proxy_that_strips_the_prefix(content_dir, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}/newsletter"
    origin = f"http://127.0.0.1:{port}"
    with process(["serve", "--host", "127.0.0.1", "--port", str(port), "--root-path", "/newsletter"],
                 environment(content_dir, tmp_path, base), f"{origin}/healthz", tmp_path / "serve.log"):
        page = httpx.get(f"{origin}/subscribe", timeout=5)
        assert page.status_code == 200 and 'name="consent"' in page.text


def test_root_path_must_be_base_urls_path(content_dir, tmp_path):
    env = environment(content_dir, tmp_path, "https://my.klarity.health/newsletter")
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "serve", "--port", str(free_port()),
                           "--root-path", "/elsewhere"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "/newsletter" in done.stderr


def test_run_serves_under_the_prefix_without_a_server_header(content_dir, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}/newsletter"
    env = environment(content_dir, tmp_path, base, NEWSLETTER_WEB_PORT=str(port), NEWSLETTER_WEB_HOST="127.0.0.1")
    with process(["run"], env, f"{base}/healthz", tmp_path / "run.log"):
        response = httpx.get(f"{base}/subscribe", timeout=5)
        assert response.status_code == 200
        assert "server" not in response.headers, response.headers
        assert response.headers["permissions-policy"]
