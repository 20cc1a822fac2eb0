"""The gate in front of ``POST /predict``: one ASGI middleware in LitServe's API server process.

It reads the body in memory (never more than :attr:`Limits.max_body` bytes are kept; a
larger body is drained and refused), parses it (:func:`~lightning_ad.serve.payload.parse_body`),
checks the image's header (:func:`~lightning_ad.serve.payload.open_image`: format, bytes,
megapixels, decompression bomb) and hands LitServe one canonical JSON body
``{"image": base64, "filename": ..., "overlay": ...}``. A refused request is answered here with
its 4xx JSON and never reaches the inference worker, so it cannot delay or fail a batch.
Nothing is written to disk.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable, Dict, List, Optional
from urllib.parse import parse_qsl

from .payload import Limits, RequestError, open_image, parse_body

__all__ = ["PredictGate", "json_error"]

Scope = Dict[str, Any]
Message = Dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: A body declared (or found) larger than this many times the limit is not drained, the connection is closed.
_DRAIN_FACTOR = 8


async def json_error(send: Send, status: int, content: Dict[str, Any], close: bool = False) -> None:
    body = json.dumps(content).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class PredictGate:
    """ASGI middleware: checks and canonicalises ``POST <api_path>`` bodies (see the module docstring)."""

    def __init__(self, app: Callable, limits: Optional[Limits] = None, api_path: str = "/predict") -> None:
        self.app = app
        self.limits = limits or Limits()
        self.api_path = api_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http" or scope.get("path") != self.api_path or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        limit = self.limits.max_body
        try:
            declared = int(headers.get("content-length", "-1"))
        except ValueError:
            declared = -1
        try:
            body = await self._read(receive, limit, declared)
            upload = parse_body(headers.get("content-type"), body, query, self.limits)
            open_image(upload.data, self.limits, upload.filename).close()
        except RequestError as err:
            await json_error(send, err.status, err.to_dict(), close=err.status == 413)
            return
        canonical = upload.to_json()
        new_headers: List[tuple] = [(k, v) for k, v in scope.get("headers", [])
                                    if k.lower() not in (b"content-type", b"content-length", b"transfer-encoding")]
        new_headers += [(b"content-type", b"application/json"), (b"content-length", str(len(canonical)).encode())]
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": canonical, "more_body": False}
            return await receive()  # http.disconnect, when the client goes away

        await self.app(dict(scope, headers=new_headers), replay, send)

    async def _read(self, receive: Receive, limit: int, declared: int) -> bytes:
        """The body, or 413 when it is larger than ``limit`` (the rest is drained up to a bound)."""
        if declared > limit * _DRAIN_FACTOR:
            raise RequestError(413, "too_large", f"the request body is {declared} bytes, over the server's limit of "
                                                 f"{self.limits.max_bytes} bytes per image (--max_bytes).")
        chunks: List[bytes] = []
        size = 0
        over = declared > limit
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise RequestError(400, "bad_request", "the client closed the connection before the body ended.")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                over = True
                chunks = []
            if not over:
                chunks.append(chunk)
            if size > limit * _DRAIN_FACTOR:
                break
            if not message.get("more_body", False):
                break
        if over:
            raise RequestError(413, "too_large", f"the request body is {'at least ' if size > limit * _DRAIN_FACTOR else ''}"
                                                 f"{size} bytes, over the server's limit of {self.limits.max_bytes} bytes "
                                                 "per image (--max_bytes).")
        return b"".join(chunks)
