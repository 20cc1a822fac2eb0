"""A ``multipart/form-data`` body held in memory, split into its parts (RFC 7578). No server code here.

:mod:`lightning_ad.serve.payload` reads request bodies with it and answers a :class:`MultipartError`
as HTTP 400 ``bad_request`` with the same message.
"""

from __future__ import annotations

from email.message import Message
from typing import Dict, List, Mapping, Optional, Tuple

__all__ = ["MultipartError", "MAX_PARTS", "param", "split_multipart", "disposition"]

#: Most parts of a multipart body (files and fields).
MAX_PARTS = 24


class MultipartError(ValueError):
    """A malformed multipart body; the message names the problem."""


def param(content_type: str, name: str) -> Optional[str]:
    """The parameter ``name`` of a Content-Type header (``boundary``), or None."""
    message = Message()
    message["content-type"] = content_type
    value = message.get_param(name, header="content-type")
    return str(value) if isinstance(value, str) else None


def split_multipart(body: bytes, boundary: str, advice: str = "send one image per request") -> List[Tuple[Dict[str, str], bytes]]:
    """``[(headers lower-cased, content)]`` of a multipart body held in memory (at most :data:`MAX_PARTS`;
    ``advice`` ends the message when there are more)."""
    delimiter = b"--" + boundary.encode("latin-1")
    start = body.find(delimiter)
    if start < 0 or (start > 0 and body[start - 2 : start] != b"\r\n"):
        raise MultipartError("malformed multipart body: the boundary of the Content-Type header is not in the body.")
    parts: List[Tuple[Dict[str, str], bytes]] = []
    position = start + len(delimiter)
    while True:
        if body[position : position + 2] == b"--":
            return parts
        if body[position : position + 2] != b"\r\n":
            raise MultipartError("malformed multipart body: a boundary is not followed by a line break.")
        end = body.find(b"\r\n" + delimiter, position + 2)
        if end < 0:
            raise MultipartError("malformed multipart body: it ends before its closing boundary (truncated upload?).")
        part = body[position + 2 : end]
        split = part.find(b"\r\n\r\n")
        if split < 0 and not part.startswith(b"\r\n"):
            raise MultipartError("malformed multipart body: a part has no blank line after its headers.")
        head, content = (b"", part[2:]) if part.startswith(b"\r\n") else (part[:split], part[split + 4 :])
        headers: Dict[str, str] = {}
        for line in head.split(b"\r\n"):
            key, sep, value = line.partition(b":")
            if not sep:
                raise MultipartError("malformed multipart body: a part header line has no ':'.")
            headers[key.strip().lower().decode("latin-1")] = value.strip().decode("utf-8", "replace")
        parts.append((headers, content))
        position = end + 2 + len(delimiter)
        if len(parts) > MAX_PARTS:
            raise MultipartError(f"the multipart body has more than {MAX_PARTS} parts; {advice}.")


def disposition(headers: Mapping[str, str]) -> Tuple[Optional[str], Optional[str]]:
    """``(field name, file name)`` of a part's Content-Disposition."""
    raw = headers.get("content-disposition")
    if not raw:
        raise MultipartError("malformed multipart body: a part has no Content-Disposition header.")
    message = Message()
    message["content-disposition"] = raw
    name = message.get_param("name", header="content-disposition")
    filename = message.get_filename()
    return (str(name) if isinstance(name, str) else None), (str(filename) if filename is not None else None)
