"""A short fuzz of the image and mask loaders: random bytes and valid files corrupted at random.

The only acceptable outcomes are success (a well-formed array) or the documented
errors (``ImageDecodeError``/``MaskError``, both ``DataError``s); never another
exception, and never a hang (each call runs under an alarm).
"""

from __future__ import annotations

import signal
import time
import warnings

import numpy as np
import pytest
from conftest import encoded
from PIL import Image

from lightning_ad.data.images import check_image, image_size, load_image
from lightning_ad.data.masks import load_mask
from lightning_ad.errors import DataError

SEED = 20240611
PER_CALL_SECONDS = 5

FORMATS = [("PNG", "png"), ("JPEG", "jpg"), ("TIFF", "tif"), ("BMP", "bmp"), ("WEBP", "webp"), ("PPM", "ppm")]


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang("a loader call ran for more than %d s" % PER_CALL_SECONDS)


@pytest.fixture
def alarm():
    if not hasattr(signal, "SIGALRM"):
        pytest.skip("needs SIGALRM")
    previous = signal.signal(signal.SIGALRM, _alarm)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _valid_files(rng: np.random.Generator):
    """Small valid files of every format and a few modes."""
    rgb = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    rgb[:8] = 120
    images = {
        "RGB": Image.fromarray(rgb),
        "L": Image.fromarray(rgb[..., 0]),
        "I;16": Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)),
        "P": Image.fromarray(rgb).quantize(16),
    }
    out = []
    for fmt, ext in FORMATS:
        for mode, im in images.items():
            if mode == "I;16" and fmt not in ("PNG", "TIFF"):
                continue
            if mode == "P" and fmt in ("JPEG", "PPM", "WEBP"):
                continue
            out.append((ext, encoded(im, fmt)))
    return out


def _corrupt(data: bytes, rng: np.random.Generator) -> bytes:
    data = bytearray(data)
    kind = rng.integers(0, 4)
    if kind == 0:  # flip bytes at random positions (headers included)
        for pos in rng.integers(0, len(data), rng.integers(1, 8)):
            data[pos] = int(rng.integers(0, 256))
    elif kind == 1:  # truncate
        data = data[: int(rng.integers(0, len(data)))]
    elif kind == 2:  # overwrite a run with random bytes
        start = int(rng.integers(0, len(data)))
        run = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
        data[start : start + len(run)] = run
    else:  # insert garbage
        pos = int(rng.integers(0, len(data)))
        data[pos:pos] = rng.integers(0, 256, int(rng.integers(1, 32)), dtype=np.uint8).tobytes()
    return bytes(data)


def _call_all(path):
    """Every loader on ``path``: each either succeeds with a sane result or raises a DataError."""
    outcomes = []
    for name, fn in (
        ("check_image", lambda: check_image(path)),
        ("check_image_full", lambda: check_image(path, full=True)),
        ("image_size", lambda: image_size(path)),
        ("load_image", lambda: load_image(path)),
        ("load_mask", lambda: load_mask(path, None, path.with_name("image.png"))),
    ):
        signal.alarm(PER_CALL_SECONDS)
        try:
            result = fn()
        except DataError as err:
            assert str(path) in str(err), f"{name}: the error does not name the file: {err}"
            outcomes.append((name, "error"))
            continue
        except _Hang:
            raise
        except Exception as err:  # noqa: BLE001 - the point of the test
            pytest.fail(f"{name} raised {type(err).__name__}: {err} for {path} ({path.stat().st_size} bytes)")
        finally:
            signal.alarm(0)
        if name == "load_image":
            assert result.ndim == 3 and result.shape[2] == 3 and result.dtype == np.uint8
        elif name == "load_mask":
            assert result.ndim == 2 and result.dtype == bool
        else:
            assert len(result) == 2 and min(result) >= 1
        outcomes.append((name, "ok"))
    ok = dict(outcomes)
    # consistency: a file that fully decodes passes the full check, and the other way round
    assert ok["load_image"] == ok["check_image_full"], outcomes
    if ok["check_image"] == "ok" and ok["load_image"] == "error":
        # the cheap check of a PNG can miss corrupt pixel data with valid CRCs: rare, but allowed
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", outcomes
    return ok


def test_random_bytes_give_the_documented_error(tmp_path, alarm):
    rng = np.random.default_rng(SEED)
    headers = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"II*\x00", b"MM\x00*", b"BM", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"P6\n", b"GIF89a"]
    start = time.perf_counter()
    for i in range(120):
        header = headers[i % len(headers)]
        body = rng.integers(0, 256, int(rng.integers(0, 600)), dtype=np.uint8).tobytes()
        ext = FORMATS[i % len(FORMATS)][1]
        path = tmp_path / f"random_{i}.{ext}"
        path.write_bytes(header + body)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outcome = _call_all(path)
        assert outcome["load_image"] == "error"  # random bytes never make a picture
    assert time.perf_counter() - start < 60


def test_corrupted_valid_files_give_the_documented_error_or_decode(tmp_path, alarm):
    rng = np.random.default_rng(SEED + 1)
    files = _valid_files(rng)
    counts = {"ok": 0, "error": 0}
    start = time.perf_counter()
    for i in range(300):
        ext, data = files[i % len(files)]
        path = tmp_path / f"corrupt_{i}.{ext}"
        path.write_bytes(_corrupt(data, rng))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outcome = _call_all(path)
        counts[outcome["load_image"]] += 1
    # the fuzz exercised both outcomes: decoders that fail and files that survive corruption
    assert counts["ok"] > 10 and counts["error"] > 50, counts
    assert time.perf_counter() - start < 60


def test_every_valid_file_loads(tmp_path, alarm):
    rng = np.random.default_rng(SEED + 2)
    for i, (ext, data) in enumerate(_valid_files(rng)):
        path = tmp_path / f"valid_{i}.{ext}"
        path.write_bytes(data)
        outcome = _call_all(path)
        outcome.pop("load_mask")  # random pictures are refused as masks ("does not look like a mask")
        assert set(outcome.values()) == {"ok"}, (ext, outcome)
