"""The LitServe API around :class:`~lightning_ad.inference.detector.Detector`: decode, score in batches, answer.

LitServe runs :class:`DetectorAPI` in its inference worker(s): ``setup`` loads the checkpoint
once, ``decode_request`` turns one canonical request (see :mod:`lightning_ad.serve.gate`) into
pixels, ``predict`` calls the detector on the batch LitServe collected (``max_batch_size``,
``batch_timeout``), ``encode_response`` writes the JSON. Scoring is the detector's: nothing
here computes a score, a threshold or a map.

LitServe fails a whole batch when ``decode_request``, ``predict`` or ``encode_response``
raises, so none of them raises for one bad request: a refused image travels through the
batch as a :class:`Refused` and is answered with its own 4xx, while the good images of the
same batch are scored.

When the server can add images (:mod:`~lightning_ad.serve.growth`), each worker follows the bank
version in a thread of its own: it loads the grown checkpoint off to the side and swaps its
detector in one assignment. ``predict`` takes the detector once per batch, so a batch in flight
finishes on the bank it started with; each answer names the size of the bank that scored it.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Union

import numpy as np

from .answers import finite_or_none, inspected_box, png_base64, regions
from .growth import FOLLOW_INTERVAL_S
from .payload import Limits, RequestError, check_filename, decode_image, truthy

try:  # the [serve] extra
    import litserve as ls
    from fastapi.responses import JSONResponse
except ImportError:  # pragma: no cover - the module stays importable (docs, doctests) without it
    ls = None
    JSONResponse = None

__all__ = ["DetectorAPI", "Refused", "Decoded", "result_dict", "LITSERVE_AVAILABLE"]

LITSERVE_AVAILABLE = ls is not None
_Base: Any = ls.LitAPI if ls is not None else object
log = logging.getLogger("lightning_ad.serve")


@dataclass
class Decoded:
    """One request's pixels, ready for the detector."""

    rgb: np.ndarray
    filename: Optional[str]
    overlay: bool


@dataclass
class Refused:
    """One request refused in the worker (status, code and message go back to its client only)."""

    status: int
    code: str
    detail: str

    def to_dict(self) -> Dict[str, Any]:
        return {"error": self.code, "detail": self.detail, "status": self.status}


def result_dict(detection: Any, filename: Optional[str] = None, overlay: Optional[np.ndarray] = None,
                bank_size: Optional[int] = None) -> Dict[str, Any]:
    """The JSON answer of one :class:`~lightning_ad.inference.detection.Detection`.

    ``score`` / ``normalized_score`` / ``decision`` / thresholds are the detection's own
    values; ``boxes`` are the 8-connected regions of its mask (:func:`~lightning_ad.serve.answers.regions`)
    in the image's pixels; ``inspected`` is the part of the image the model saw (the
    checkpoint's centre crop mapped back); ``bank_size``: the images in the bank that scored it;
    ``overlay_png`` (base64 PNG) only when given.
    """
    height, width = detection.size
    decision = detection.decision
    out = {
        "filename": filename,
        "score": float(detection.score),
        "normalized_score": finite_or_none(detection.normalized_score),
        "decision": decision,
        "verdict": "unknown" if decision is None else ("anomalous" if decision else "normal"),
        "thresholds": {"image": finite_or_none(detection.image_threshold), "pixel": finite_or_none(detection.pixel_threshold)},
        "image_size": {"width": int(width), "height": int(height)},
        "inspected": inspected_box(detection.anomaly_map),
        "boxes": regions(detection.mask, detection.anomaly_map),
        "bank_size": None if bank_size is None else int(bank_size),
    }
    if overlay is not None:
        out["overlay_png"] = png_base64(overlay)
    return out


class DetectorAPI(_Base):
    """LitServe API of a fitted checkpoint.

    Args:
        ckpt_path: the checkpoint (read in each inference worker by ``setup``).
        limits: what one request may hold (checked again here after the gate).
        max_batch_size: LitServe's dynamic batching, the most requests in one batch; the
            detector scores each collected batch in one forward pass.
        batch_timeout: LitServe's dynamic batching, the longest wait in seconds for a batch to fill.
        link: where the bank version and the grown checkpoint are (:class:`~lightning_ad.serve.growth.BankLink`),
            when the server can add images; None: the checkpoint is served as it is.
    """

    def __init__(self, ckpt_path: str, limits: Optional[Limits] = None, max_batch_size: int = 8, batch_timeout: float = 0.01,
                 api_path: str = "/predict", link: Any = None) -> None:
        if ls is None:
            raise ImportError("the server needs LitServe: pip install -e '.[serve]'")
        import warnings

        with warnings.catch_warnings():  # batch/unbatch are overridden for max_batch_size > 1 only; 1 is fine
            warnings.filterwarnings("ignore", message=".*both batch and unbatch methods implemented.*")
            super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path=api_path)
        self.ckpt_path = str(ckpt_path)
        self.limits = limits or Limits()
        self.link = link
        self.detector = None

    # ------------------------------------------------------------------ LitServe hooks

    def setup(self, device: str) -> None:
        from ..inference.detector import Detector

        path, version, slot = self.ckpt_path, 0, None
        if self.link is not None:
            slot = self.link.claim_slot()
            version = int(self.link.version.value)
            if version > 0:  # this worker started after an update (a restarted worker): serve the grown bank
                path = self.link.grown
        self.detector = Detector.from_checkpoint(path, device=device, batch_size=self.max_batch_size)
        log.info("lightning_ad serve: %r on %s", self.detector, device)
        if self.link is not None:
            self.link.acks[slot] = version
            threading.Thread(target=self._follow, args=(device, slot, version), name="lightning-ad-follow", daemon=True).start()

    def _follow(self, device: str, slot: int, served: int) -> None:
        """Follow the bank version: load each grown checkpoint off to the side, then swap in one assignment."""
        from ..inference.detector import Detector

        while True:
            time.sleep(FOLLOW_INTERVAL_S)
            version = int(self.link.version.value)
            if version == served:
                continue
            try:
                grown = Detector.from_checkpoint(self.link.grown, device=device, batch_size=self.max_batch_size)
            except Exception:  # noqa: BLE001 - keep serving the bank in hand, try again
                log.exception("cannot load the grown checkpoint %s; still serving the previous bank", self.link.grown)
                time.sleep(1.0)
                continue
            self.detector = grown  # the swap: a batch in flight keeps the detector it took
            served = version
            self.link.acks[slot] = version
            log.info("lightning_ad serve: now serving %r (bank version %d)", grown, version)

    def decode_request(self, request):  # no annotation: LitServe takes it as the request type
        try:
            if not isinstance(request, dict) or not isinstance(request.get("image"), str):
                raise RequestError(400, "bad_request", 'the request must be {"image": "<base64>"}.')
            filename = check_filename(request.get("filename"))
            try:
                data = base64.b64decode(request["image"], validate=True)
            except (binascii.Error, ValueError) as err:
                raise RequestError(400, "bad_request", f"'image' is not valid base64 ({err}).") from None
            return Decoded(decode_image(data, self.limits, filename), filename, truthy(request.get("overlay", False)))
        except RequestError as err:
            return Refused(err.status, err.code, err.message)
        except Exception as err:  # noqa: BLE001 - never fail the batch for one request
            log.exception("unexpected error while decoding a request")
            return Refused(400, "bad_request", f"the request cannot be read: {type(err).__name__}: {err}.")

    def batch(self, inputs: List[Union[Decoded, Refused]]) -> List[Union[Decoded, Refused]]:
        return list(inputs)

    def unbatch(self, outputs: List[Any]) -> List[Any]:
        return list(outputs)

    def predict(self, x: Union[Decoded, Refused, List[Union[Decoded, Refused]]]) -> Any:
        single = not isinstance(x, list)
        items = [x] if single else x
        outputs: List[Any] = list(items)  # Refused items answer themselves
        good = [i for i, item in enumerate(items) if isinstance(item, Decoded)]
        if good:
            detector = self.detector  # one bank for the whole batch, whatever swaps meanwhile
            try:
                found = detector([items[i].rgb for i in good])
            except Exception:  # noqa: BLE001 - find the culprit: score one by one
                log.exception("the detector failed on a batch of %d; scoring its images one by one", len(good))
                found = [self._one(detector, items[i].rgb) for i in good]
            bank_size = detector.model.bank_size
            for i, detection in zip(good, found):
                outputs[i] = detection if isinstance(detection, Refused) else self._result(items[i], detection, bank_size)
        return outputs[0] if single else outputs

    def encode_response(self, output):  # no annotation: LitServe takes it as the response type
        if isinstance(output, Refused):
            return JSONResponse(status_code=output.status, content=output.to_dict())
        return output

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _one(detector: Any, rgb: np.ndarray) -> Any:
        from ..errors import DataError

        try:
            return detector([rgb])[0]
        except DataError as err:
            return Refused(422, "unprocessable_image", str(err))
        except Exception as err:  # noqa: BLE001
            log.exception("the detector failed on one image")
            return Refused(500, "internal_error", f"the detector failed on this image: {type(err).__name__}: {err}")

    @staticmethod
    def _result(item: Decoded, detection: Any, bank_size: Optional[int] = None) -> Dict[str, Any]:
        try:
            overlay = detection.overlay(item.rgb) if item.overlay else None
            return result_dict(detection, item.filename, overlay, bank_size)
        except Exception as err:  # noqa: BLE001 - one answer's formatting must not fail the batch
            log.exception("cannot format a detection")
            return Refused(500, "internal_error", f"cannot format the result: {type(err).__name__}: {err}")
