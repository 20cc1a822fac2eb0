"""Request bodies in, checked pictures out. No server code here (the JSON of the answers: :mod:`lightning_ad.serve.answers`).

Bodies (``POST /predict``)
    * ``multipart/form-data`` with one file part (any field name; ``file`` by convention) and,
      optionally, a field ``overlay`` (``1``/``true``);
    * ``application/json``: ``{"image": "<base64>", "filename": "x.png", "overlay": true}``
      (``image`` may be a ``data:image/...;base64,`` URL);
    * a bare image body with ``Content-Type: image/*`` or ``application/octet-stream``.

    ``?overlay=1`` in the URL asks for the overlay with any body. Anything else is refused with
    a :class:`RequestError` (HTTP 4xx) whose message names the problem.

Images
    Decoded in memory, never written to disk, by the library's rules (EXIF orientation,
    16-bit scaling, grey -> RGB, alpha dropped: :func:`lightning_ad.data.inputs.as_rgb_uint8`),
    after these checks, in this order:

    ============================  ======  ===========================================
    problem                       status  ``error`` code
    ============================  ======  ===========================================
    wrong ``Content-Type``        415     ``unsupported_media_type``
    body or file over the bytes   413     ``too_large``
    limit
    malformed multipart / JSON /  400     ``bad_request``
    base64, no file, two files
    file name with a folder part  400     ``bad_filename``
    (``../x.png``, ``/etc/x``,
    ``a\\b.png``) or control
    characters
    zero bytes                    400     ``empty_file``
    not an image of a supported   400     ``not_an_image``
    format
    over the megapixel limit      413     ``too_many_pixels``
    PIL's decompression-bomb      413     ``decompression_bomb``
    limit
    truncated or corrupt data     400     ``corrupt_image``
    ============================  ======  ===========================================

    Supported formats: PNG, JPEG, BMP, TIFF, WebP and PNM (the extensions the data folders
    read, :data:`lightning_ad.data.folders.IMAGE_EXTENSIONS`). Other PIL decoders (EPS, ...) are never
    tried.

Bodies (``POST /normal``, :func:`parse_images`)
    The same forms holding up to :data:`MAX_NORMAL_IMAGES` images: one file part per image;
    ``{"images": [{"image": "<base64>", "filename": "a.png"}, ...]}`` (or one ``{"image": ...}``);
    or one bare image. Each image passes the checks above; a refusal names the item
    (``image 2 of 3: ...``).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from .. import checks
from ..data.images import IMAGE_FORMATS
from ..data.inputs import as_rgb_uint8
from ..errors import DataError
from .multipart import MultipartError, disposition, param, split_multipart

__all__ = [
    "Limits",
    "RequestError",
    "Upload",
    "parse_body",
    "parse_images",
    "decode_images",
    "MAX_NORMAL_IMAGES",
    "check_filename",
    "open_image",
    "decode_image",
    "truthy",
    "PIL_FORMATS",
]

#: PIL decoders tried on request bodies: those of image bytes given to the Detector (the formats of
#: ``IMAGE_EXTENSIONS``).
PIL_FORMATS = IMAGE_FORMATS
_FORMAT_NAMES = "PNG, JPEG, BMP, TIFF, WebP, PNM"
_IMAGE_TYPES = ("image/", "application/octet-stream")
#: Room for base64 (4/3) and multipart headers above the image byte limit.
_BODY_OVERHEAD = 64 * 1024
#: Most images one ``POST /normal`` request may hold (its body may be this many times :attr:`Limits.max_body`).
MAX_NORMAL_IMAGES = 16


@dataclass(frozen=True)
class Limits:
    """What the server accepts: bytes of one image file and its pixels (width x height) in millions."""

    max_bytes: int = 20 * 2**20
    max_megapixels: float = 12.0

    def __post_init__(self) -> None:
        checks.positive_int("max_bytes", self.max_bytes)
        checks.positive_number("max_megapixels", self.max_megapixels)

    @property
    def max_pixels(self) -> int:
        return int(self.max_megapixels * 1_000_000)

    @property
    def max_body(self) -> int:
        """Largest request body read: the image limit in base64 plus headers."""
        return self.max_bytes * 4 // 3 + 4 + _BODY_OVERHEAD

    def to_dict(self) -> Dict[str, Any]:
        return {"max_bytes": self.max_bytes, "max_megapixels": self.max_megapixels, "formats": list(PIL_FORMATS)}


class RequestError(DataError):
    """A request the server refuses: HTTP ``status`` (4xx), a short ``code`` and a message naming the problem."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = int(status)
        self.code = code
        self.message = message

    def to_dict(self) -> Dict[str, Any]:
        return {"error": self.code, "detail": self.message, "status": self.status}


@dataclass(frozen=True)
class Upload:
    """One image as sent: its bytes, the client's file name (checked) and whether the overlay is wanted."""

    data: bytes
    filename: Optional[str] = None
    overlay: bool = False

    def to_json(self) -> bytes:
        """The canonical JSON body the inference worker reads."""
        return json.dumps({"image": base64.b64encode(self.data).decode("ascii"), "filename": self.filename,
                           "overlay": self.overlay}).encode("utf-8")


def truthy(value: Any) -> bool:
    """``1``, ``true``, ``yes``, ``on`` (any case) and ``True`` are true."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value == 1
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def check_filename(name: Any) -> Optional[str]:
    """A client's file name, refused (400 ``bad_filename``) when it has a folder part or odd characters.

    >>> check_filename("000.png")
    '000.png'
    >>> check_filename("../../etc/passwd")
    Traceback (most recent call last):
    ...
    lightning_ad.serve.payload.RequestError: file name '../../etc/passwd' tries to leave its folder (it has a folder part); send the bare file name, e.g. 'passwd'.
    """
    if name is None or name == "":
        return None
    if not isinstance(name, str):
        raise RequestError(400, "bad_filename", f"file name must be a string, not {type(name).__name__}.")
    if len(name) > 255:
        raise RequestError(400, "bad_filename", f"file name is {len(name)} characters long (at most 255).")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise RequestError(400, "bad_filename", f"file name {name!r} contains control characters.")
    bare = PureWindowsPath(PurePosixPath(name).name).name
    if bare != name or name in (".", "..") or ":" in name:
        raise RequestError(
            400, "bad_filename",
            f"file name {name!r} tries to leave its folder (it has a folder part); send the bare file name"
            + (f", e.g. {bare!r}." if bare not in ("", ".", "..") else "."),
        )
    return name


def _too_large(size: int, limits: Limits, what: str = "the image file") -> RequestError:
    return RequestError(413, "too_large", f"{what} is {size} bytes, over the server's limit of {limits.max_bytes} bytes "
                                          "(--max_bytes).")


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _check_part_type(headers: Mapping[str, str], filename: Optional[str]) -> None:
    declared = _media_type(headers.get("content-type", ""))
    if declared and not declared.startswith(_IMAGE_TYPES):
        raise RequestError(415, "unsupported_media_type",
                           f"the file part {filename or ''!r} is declared as {declared!r}; send an image "
                           "(image/png, image/jpeg, ... or application/octet-stream).")


def _b64(text: Any, limits: Limits) -> bytes:
    if not isinstance(text, str):
        raise RequestError(400, "bad_request", f"JSON field 'image' must be a base64 string, not {type(text).__name__}.")
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or ";base64" not in header:
            raise RequestError(400, "bad_request", "JSON field 'image' is a data URL without ';base64,'.")
        media = header[5:].split(";", 1)[0].strip().lower()
        if media and not media.startswith(_IMAGE_TYPES):
            raise RequestError(415, "unsupported_media_type", f"the data URL in 'image' is of type {media!r}; send an image.")
    text = "".join(text.split())
    if len(text) * 3 // 4 > limits.max_bytes + 3:
        raise _too_large(len(text) * 3 // 4, limits)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise RequestError(400, "bad_request", f"JSON field 'image' is not valid base64 ({err}).") from None


def _multipart_files(content_type: str, body: bytes, advice: str) -> Tuple[List[Tuple[Dict[str, str], str, bytes]], bool]:
    """``([(part headers, file name, content)], overlay field)`` of a multipart body."""
    boundary = param(content_type, "boundary")
    if not boundary:
        raise RequestError(400, "bad_request", "multipart/form-data without a boundary parameter.")
    try:
        parts = [(headers, *disposition(headers), content) for headers, content in split_multipart(body, boundary, advice)]
    except MultipartError as err:
        raise RequestError(400, "bad_request", str(err)) from None
    files, overlay = [], False
    for headers, name, filename, content in parts:
        if filename is not None:
            files.append((headers, filename, content))
        elif name == "overlay":
            overlay = overlay or truthy(content.decode("utf-8", "replace"))
    if not files:
        raise RequestError(400, "bad_request", "the multipart body holds no file part: send the image as a file "
                                               "(curl -F file=@image.png).")
    return files, overlay


def _file_upload(headers: Mapping[str, str], filename: str, content: bytes, limits: Limits, overlay: bool = False) -> Upload:
    filename = check_filename(filename)
    _check_part_type(headers, filename)
    if len(content) > limits.max_bytes:
        raise _too_large(len(content), limits)
    return Upload(content, filename, overlay)


def _json_upload(item: Any, limits: Limits, overlay: bool = False) -> Upload:
    filename = check_filename(item.get("filename"))
    data = _b64(item["image"], limits)
    if len(data) > limits.max_bytes:
        raise _too_large(len(data), limits)
    return Upload(data, filename, overlay or truthy(item.get("overlay", False)))


def _json_payload(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError) as err:
        raise RequestError(400, "bad_request", f"the body is not valid JSON ({err}).") from None


def _unsupported(media: str) -> RequestError:
    return RequestError(415, "unsupported_media_type",
                        f"Content-Type {media or 'none'!r} is not accepted; send multipart/form-data (a file), application/json "
                        '({"image": base64}) or the image itself as image/png, image/jpeg, ...')


def parse_body(content_type: Optional[str], body: bytes, query: Mapping[str, str], limits: Limits) -> Upload:
    """The one image of a ``POST /predict`` body (see the module rules) or a :class:`RequestError`."""
    media = _media_type(content_type or "")
    overlay = truthy(query.get("overlay", "0"))
    if len(body) > limits.max_body:
        raise _too_large(len(body), limits, "the request body")
    if media == "multipart/form-data":
        files, asked = _multipart_files(content_type or "", body, "send one image per request")
        if len(files) > 1:
            raise RequestError(400, "bad_request", f"the multipart body holds {len(files)} files; send one image per request.")
        return _file_upload(*files[0], limits, overlay or asked)
    if media == "application/json":
        payload = _json_payload(body)
        if not isinstance(payload, dict) or "image" not in payload:
            raise RequestError(400, "bad_request", 'the JSON body must be an object {"image": "<base64 bytes>", '
                                                   '"filename": optional, "overlay": optional}.')
        return _json_upload(payload, limits, overlay)
    if media.startswith(_IMAGE_TYPES):
        if len(body) > limits.max_bytes:
            raise _too_large(len(body), limits)
        return Upload(bytes(body), check_filename(query.get("filename")), overlay)
    raise _unsupported(media)


def _item(position: int, count: int, err: RequestError) -> RequestError:
    """``err`` naming the item it is about (``image 2 of 3: ...``)."""
    return RequestError(err.status, err.code, f"image {position + 1} of {count}: {err.message}")


def parse_images(content_type: Optional[str], body: bytes, query: Mapping[str, str], limits: Limits,
                 most: int = MAX_NORMAL_IMAGES) -> List[Upload]:
    """The images of a ``POST /normal`` body (1 to ``most``; see the module rules) or a :class:`RequestError`
    naming the item at fault.

    >>> import base64, json
    >>> body = json.dumps({"images": [{"image": base64.b64encode(b"x").decode(), "filename": "a.png"}]}).encode()
    >>> [(u.data, u.filename) for u in parse_images("application/json", body, {}, Limits())]
    [(b'x', 'a.png')]
    """
    media = _media_type(content_type or "")
    if len(body) > limits.max_body * most:
        raise RequestError(413, "too_large", f"the request body is {len(body)} bytes, over the server's limit of "
                                             f"{most} images of {limits.max_bytes} bytes (--max_bytes).")
    advice = f"send at most {most} images per request"
    if media == "multipart/form-data":
        files, _ = _multipart_files(content_type or "", body, advice)
        items: List[Any] = files
        read = lambda item: _file_upload(*item, limits)  # noqa: E731
    elif media == "application/json":
        payload = _json_payload(body)
        if isinstance(payload, dict) and isinstance(payload.get("images"), list) and "image" not in payload:
            items = payload["images"]
        elif isinstance(payload, dict) and "image" in payload and "images" not in payload:
            items = [payload]
        else:
            raise RequestError(400, "bad_request", 'the JSON body must be {"images": [{"image": "<base64 bytes>", '
                                                   '"filename": optional}, ...]} or {"image": "<base64 bytes>"}.')

        def read(item: Any) -> Upload:
            if not isinstance(item, dict) or "image" not in item:
                raise RequestError(400, "bad_request", 'each item must be an object {"image": "<base64 bytes>", '
                                                       '"filename": optional}.')
            return _json_upload(item, limits)
    elif media.startswith(_IMAGE_TYPES):
        return [parse_body(content_type, body, query, limits)]
    else:
        raise _unsupported(media)
    if not items:
        raise RequestError(400, "bad_request", "the request holds no image.")
    if len(items) > most:
        raise RequestError(400, "bad_request", f"the request holds {len(items)} images; {advice}.")
    uploads = []
    for position, item in enumerate(items):
        try:
            uploads.append(read(item))
        except RequestError as err:
            raise _item(position, len(items), err) from None
    return uploads


# ---------------------------------------------------------------------- images


def _named(filename: Optional[str]) -> str:
    return f"{filename!r}" if filename else "the image"


def open_image(data: bytes, limits: Limits, filename: Optional[str] = None) -> Image.Image:
    """Open ``data`` from memory and check it from its header only (format, size, pixel limits).

    The image is not decoded yet: :func:`decode_image` does that.
    """
    what = _named(filename)
    if len(data) == 0:
        raise RequestError(400, "empty_file", f"{what} is empty (0 bytes).")
    if len(data) > limits.max_bytes:
        raise _too_large(len(data), limits, f"{what}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data), formats=PIL_FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise RequestError(413, "decompression_bomb", f"{what} is refused as a decompression bomb: {err}") from None
        except UnidentifiedImageError:
            raise RequestError(400, "not_an_image", f"{what} ({len(data)} bytes) is not an image in a supported format "
                                                    f"({_FORMAT_NAMES}).") from None
        except Exception as err:  # noqa: BLE001 - any decoder failure is the body's fault
            raise RequestError(400, "corrupt_image", f"{what} cannot be read: {type(err).__name__}: {err}.") from None
    width, height = im.size
    if width < 1 or height < 1:
        raise RequestError(400, "corrupt_image", f"{what} has no pixels ({width}x{height}).")
    if width * height > limits.max_pixels:
        raise RequestError(413, "too_many_pixels",
                           f"{what} is {width}x{height} = {width * height / 1e6:.1f} megapixels, over the server's limit "
                           f"of {limits.max_megapixels:g} (--max_megapixels).")
    return im


def decode_image(data: bytes, limits: Limits, filename: Optional[str] = None) -> np.ndarray:
    """``data`` -> ``[H, W, 3]`` uint8 RGB as displayed, or a :class:`RequestError` (4xx)."""
    im = open_image(data, limits, filename)
    what = _named(filename)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im.load()  # the first frame of a multi-frame file, decoded once
            return as_rgb_uint8(im)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise RequestError(413, "decompression_bomb", f"{what} is refused as a decompression bomb: {err}") from None
        except DataError as err:
            raise RequestError(400, "corrupt_image", f"{what}: {err}") from None
        except Exception as err:  # noqa: BLE001 - truncated data, broken chunks ...
            raise RequestError(400, "corrupt_image", f"{what} is truncated or corrupt: {type(err).__name__}: {err}.") from None
        finally:
            im.close()


def decode_images(uploads: List[Upload], limits: Limits) -> List[np.ndarray]:
    """Each upload's pixels (:func:`decode_image`), or the first :class:`RequestError`, naming its item."""
    out = []
    for position, upload in enumerate(uploads):
        try:
            out.append(decode_image(upload.data, limits, upload.filename))
        except RequestError as err:
            raise _item(position, len(uploads), err) from None
    return out
