"""A small HTTP client of the server (standard library only), used by the tests and the benchmark.

::

    from lightning_ad.serve.client import Client
    with Client("http://127.0.0.1:8000") as client:
        status, answer = client.predict(open("000.png", "rb").read(), filename="000.png")
        print(status, answer["verdict"], answer["score"])
        status, answer = client.add_normal([("001.png", open("001.png", "rb").read())], token="...")
        print(status, answer["added"], answer["bank_size"])
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import time
import uuid
from typing import Any, Callable, Dict, Optional, Sequence, Tuple
from urllib.parse import urlsplit

__all__ = ["Client", "multipart", "free_port", "wait_until_healthy", "stop_server"]


def multipart(files: Sequence[Tuple[str, Optional[str], bytes, Optional[str]]], fields: Optional[Dict[str, str]] = None) -> Tuple[bytes, str]:
    """``(body, content_type)`` of a multipart/form-data body.

    ``files``: ``(field, file name or None, bytes, content type or None)``; ``fields``: plain fields.
    """
    boundary = uuid.uuid4().hex
    out = []
    for name, value in (fields or {}).items():
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for field, filename, data, content_type in files:
        disposition = f'form-data; name="{field}"' + (f'; filename="{filename}"' if filename is not None else "")
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        out.append(head.encode("utf-8") + b"\r\n" + data + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


class Client:
    """One keep-alive connection to the server at ``url`` (``http://host:port``)."""

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.timeout = timeout
        self._connection: Optional[http.client.HTTPConnection] = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def request(self, method: str, path: str, body: Optional[bytes] = None, content_type: Optional[str] = None,
                headers: Optional[Dict[str, str]] = None) -> Tuple[int, Any]:
        """``(status, parsed JSON, or the text when the answer is not JSON)``; reconnects once if the server closed."""
        headers = dict(headers or {})
        if content_type:
            headers["Content-Type"] = content_type
        for attempt in (0, 1):
            if self._connection is None:
                self._connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self._connection.request(method, path, body=body, headers=headers)
                response = self._connection.getresponse()
                raw = response.read()
                if response.getheader("connection", "").lower() == "close":
                    self.close()
                break
            except (ConnectionError, http.client.HTTPException):
                self.close()
                if attempt:
                    raise
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw.decode("utf-8", "replace")

    def predict(self, data: bytes, filename: Optional[str] = "image.png", overlay: bool = False,
                content_type: str = "application/octet-stream") -> Tuple[int, Any]:
        """POST one image as a multipart file."""
        body, ctype = multipart([("file", filename, data, content_type)])
        return self.request("POST", "/predict" + ("?overlay=1" if overlay else ""), body, ctype)

    def add_normal(self, images: Sequence[Tuple[Optional[str], bytes]], token: Optional[str] = None) -> Tuple[int, Any]:
        """POST ``(file name, bytes)`` images to ``/normal`` as multipart files, with ``Authorization: Bearer token``."""
        body, ctype = multipart([("file", name, data, "application/octet-stream") for name, data in images])
        return self.request("POST", "/normal", body, ctype, {"Authorization": f"Bearer {token}"} if token is not None else None)

    def health(self) -> Tuple[int, Any]:
        return self.request("GET", "/health")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a server started next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_healthy(url: str, running: Callable[[], bool], seconds: float) -> bool:
    """Poll ``GET /health`` of a server at ``url`` until it answers ``ok`` (True), its process stops
    (``running()`` False: False) or ``seconds`` pass (False)."""
    deadline = time.monotonic() + seconds
    while running():
        try:
            with Client(url, timeout=5) as client:
                if client.health() == (200, "ok"):
                    return True
        except OSError:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return False


def stop_server(process: "subprocess.Popen") -> None:
    """SIGTERM (LitServe's graceful shutdown), then SIGKILL to the server's own process group
    (started with ``start_new_session=True``: its workers only)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=10)
