"""Adding confirmed-good images to the served bank: ``POST /normal``, its token, the grown checkpoint, the swap.

Token
    Adding is off unless the server has a token (``--normal_token`` or the environment variable
    ``LIGHTNING_AD_NORMAL_TOKEN``; there is no default). Clients send ``Authorization: Bearer
    <token>``; it is compared in constant time (:func:`check_bearer`). Off: 403; no or malformed
    header: 401; a wrong token: 403. A refused request changes nothing, in memory or on disk.

The grown checkpoint
    One file beside the served one, ``<stem>.grown.ckpt`` unless ``--grown_ckpt`` names another
    (:func:`default_grown_path`). Each update writes it atomically (a new file, then a rename); the
    checkpoint given with ``--ckpt_path`` is never written. Its ``lightning_ad`` section records
    ``grown_from`` (the served checkpoint) and ``grown_from_sha256`` (that file's content). At start
    (:func:`choose_served`), the grown file is served when it was grown from this very checkpoint as
    it is now; one grown from an earlier version of the checkpoint is left aside (and replaced by
    the next update); one grown from another checkpoint, or that is no checkpoint, stops the start.

Processes and the swap
    The API server process (or processes) checks the token and decodes the images, then, holding a
    lock shared by every process (:attr:`Growth.lock`: updates are serialised, each builds on the
    last), hands them to a helper process of its own, the grower (started by the first update, it
    keeps a :class:`~lightning_ad.inference.detector.Detector` of the served bank).
    The grower calls :meth:`~lightning_ad.inference.detector.Detector.add_normal`, which builds the
    grown detector off to the side, and writes the grown checkpoint. The API server then raises the
    shared bank version (:class:`BankLink`); each inference worker's follower thread loads the grown
    checkpoint off to the side and replaces its detector in one assignment, so a batch in flight
    finishes on the detector it started with and no request fails. The update answers once every
    worker serves the new bank; ``GET /info`` shows it from then on.
"""

from __future__ import annotations

import hmac
import json
import logging
import multiprocessing as mp
import os
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .payload import RequestError

__all__ = [
    "TOKEN_ENV", "ADDING_OFF", "BankLink", "Growth", "check_bearer", "check_token_value", "default_grown_path",
    "choose_served", "bank_facts", "read_section",
]

log = logging.getLogger("lightning_ad.serve")

#: The environment variable holding the token of ``POST /normal``.
TOKEN_ENV = "LIGHTNING_AD_NORMAL_TOKEN"
ADDING_OFF = "adding images is off: start the server with --normal_token or LIGHTNING_AD_NORMAL_TOKEN"
#: Seconds between two looks of an inference worker at the bank version.
FOLLOW_INTERVAL_S = 0.05
#: Longest wait of an update for every inference worker to serve the new bank (then it answers with the count).
SWAP_WAIT_S = 300.0
#: Bytes kept for the JSON facts of the bank served (``GET /info``).
_INFO_BYTES = 1 << 20
_TOKEN_RULE = re.compile(r"[\x21-\x7e]{16,4096}")


# ---------------------------------------------------------------------- the token


def check_token_value(token: str, source: str) -> str:
    """``token`` when it can work (16 to 4096 visible ASCII characters, no space), else ``ValueError`` naming ``source``."""
    if not _TOKEN_RULE.fullmatch(token):
        raise ValueError(f"{source}: the token must be 16 or more visible ASCII characters without spaces "
                         "(for example: python -c \"import secrets; print(secrets.token_urlsafe(32))\")")
    return token


def check_bearer(expected: Optional[str], header: Optional[str]) -> Optional[RequestError]:
    """The refusal of a ``POST /normal`` with ``Authorization: header`` (None: accepted).

    >>> check_bearer(None, "Bearer x").status, check_bearer("s" * 16, None).status, check_bearer("s" * 16, "Bearer t").status
    (403, 401, 403)
    >>> check_bearer("s" * 16, "Bearer " + "s" * 16) is None
    True
    """
    if expected is None:
        return RequestError(403, "adding_off", ADDING_OFF + ".")
    scheme, _, given = (header or "").strip().partition(" ")
    given = given.strip()
    if scheme.lower() != "bearer" or not given:
        return RequestError(401, "unauthorized", "POST /normal needs the header 'Authorization: Bearer <token>'.")
    if not hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8")):
        return RequestError(403, "forbidden", "the token is wrong: nothing was added.")
    return None


# ---------------------------------------------------------------------- the grown file


def default_grown_path(ckpt_path: Path) -> Path:
    """``<stem>.grown.ckpt`` beside ``ckpt_path``."""
    return ckpt_path.with_name(f"{ckpt_path.stem}.grown.ckpt")


def read_section(path: Path) -> Dict[str, Any]:
    """The ``lightning_ad`` section of a checkpoint, read without loading its tensors (memory-mapped)."""
    import torch

    from ..inference import checkpoint as ckpt

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - an old format that cannot be mapped: read it whole
        loaded = ckpt.read_checkpoint(path)
    return ckpt.section(loaded if isinstance(loaded, dict) else {})


def _same_file(recorded: Any, path: Path) -> bool:
    if not isinstance(recorded, str) or not recorded:
        return False
    other = Path(recorded)
    if other.resolve() == path.resolve():
        return True
    try:
        return other.exists() and os.path.samefile(other, path)
    except OSError:
        return False


def choose_served(origin: Path, grown: Path, adding: bool) -> Tuple[Path, Optional[str]]:
    """``(checkpoint to serve, line to print or None)`` at start (see the module docstring); a
    :class:`~lightning_ad.errors.ConfigurationError` when the grown file belongs to something else."""
    from ..errors import ConfigurationError
    from ..inference import checkpoint as ckpt

    if grown.resolve() == origin.resolve():
        raise ConfigurationError(f"--grown_ckpt {str(grown)!r} is the served checkpoint: name another file "
                                 "(the served checkpoint is never written).")
    if not grown.exists():
        return origin, None
    try:
        meta = read_section(grown)
    except Exception as err:  # noqa: BLE001
        raise ConfigurationError(f"--grown_ckpt {str(grown)!r} exists but cannot be read as a lightning_ad checkpoint "
                                 f"({err}): move it away or name another --grown_ckpt.") from None
    recorded = meta.get("grown_from")
    if not _same_file(recorded, origin):
        raise ConfigurationError(f"--grown_ckpt {str(grown)!r} exists but was not grown from {str(origin)!r} "
                                 f"(grown_from: {recorded!r}): move it away or name another --grown_ckpt.")
    facts = f"{meta.get('bank_size')} images, last change {meta.get('bank_changed')}"
    fingerprint = meta.get("grown_from_sha256")
    if fingerprint and fingerprint != ckpt.file_sha256(origin):
        then = "the next POST /normal replaces it" if adding else "it is not used"
        return origin, (f"lightning-ad serve: {grown} ({facts}) was grown from an earlier version of {origin}, whose "
                        f"content has changed since: serving {origin} as it is; {then}.")
    unverified = "" if fingerprint else f" (not verified: it records no fingerprint of {origin.name})"
    return grown, f"lightning-ad serve: serving the grown bank {grown} ({facts}), grown from {origin}{unverified}."


def bank_facts(detector: Any, checkpoint: Path) -> Dict[str, Any]:
    """The JSON facts ``GET /info`` gives of the bank ``detector`` serves, read from ``checkpoint``."""
    info = json.loads(json.dumps(detector.info))
    info.setdefault("bank_changed", getattr(detector, "_meta", {}).get("bank_changed"))
    info["checkpoint"] = checkpoint.name
    return info


# ---------------------------------------------------------------------- shared between processes


class BankLink:
    """What an inference worker needs to follow the bank: the grown file, the bank version (0: the
    checkpoint the server started with; each update adds 1) and, per worker, the version it serves.
    Made in the main process before any other starts (spawn-context values: they travel to the
    inference workers with the API object)."""

    def __init__(self, grown: Path, workers: int) -> None:
        ctx = mp.get_context("spawn")
        self.grown = str(grown)
        self.workers = int(workers)
        self.version = ctx.Value("q", 0)
        self.acks = ctx.Array("q", [0] * self.workers)
        self._slots = ctx.Value("i", 0)

    def claim_slot(self) -> int:
        """This worker's place in :attr:`acks`."""
        with self._slots.get_lock():
            slot = self._slots.value % self.workers
            self._slots.value += 1
        return slot

    def serving(self, version: int) -> int:
        """How many workers serve ``version`` (or later)."""
        with self.acks.get_lock():
            return sum(1 for v in self.acks[:] if v >= version)


class _Grower:
    """The grower process of one API server process and the pipe to it."""

    def __init__(self, origin: Path, grown: Path, device: str, batch_size: int, origin_stat: Tuple[int, int]) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=grower_main, args=(child, str(origin), str(grown), device, batch_size, origin_stat),
                                   name="lightning-ad-grower", daemon=True)
        self.process.start()
        child.close()

    def call(self, message: Tuple[Any, ...]) -> Any:
        ident = uuid.uuid4().hex
        self.conn.send((ident, *message))
        while True:
            if self.conn.poll(0.5):
                answer_id, answer = self.conn.recv()
                if answer_id == ident:
                    return answer
            elif not self.process.is_alive():
                raise RuntimeError(f"the grower process stopped (exit code {self.process.exitcode})")

    def alive(self) -> bool:
        return self.process.is_alive()


class Growth:
    """The API server side of ``POST /normal``: the token, the update lock, the grower, the facts of the bank served.

    Made in the main process (its locks and shared values reach the API server processes, which
    LitServe forks); never sent to an inference worker (those get :attr:`link` only).
    """

    def __init__(self, origin: Path, grown: Path, serving: Path, token: Optional[str], workers: int, device: str,
                 batch_size: int, facts: Dict[str, Any]) -> None:
        ctx = mp.get_context("spawn")
        self.origin, self.grown, self.serving = Path(origin).resolve(), Path(grown).resolve(), Path(serving).resolve()
        self.token = token
        self.device, self.batch_size = device, batch_size
        self.link = BankLink(self.grown, workers)
        self.lock = ctx.Lock()  # one update at a time, across the API server processes
        self._facts_lock = ctx.Lock()
        self._facts = ctx.RawArray("c", _INFO_BYTES)
        self._facts_len = ctx.RawValue("q", 0)
        self._start_facts = facts
        stat = self.origin.stat()
        self._origin_stat = (stat.st_size, stat.st_mtime_ns)
        self._grower: Optional[_Grower] = None
        self._grower_pid = -1
        self._local = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.token is not None

    # ------------------------------------------------------------------ facts

    def facts(self) -> Dict[str, Any]:
        """The facts of the bank the workers serve (those the server started with until an update swaps)."""
        with self._facts_lock:
            size = self._facts_len.value
            raw = bytes(self._facts[:size]) if size else b""
        return json.loads(raw) if raw else dict(self._start_facts)

    def _publish(self, facts: Dict[str, Any]) -> None:
        raw = json.dumps(facts).encode("utf-8")
        if len(raw) > _INFO_BYTES:  # never in practice; keep what GET /info promises
            raw = json.dumps({k: facts.get(k) for k in ("bank_size", "bank_changed", "thresholds", "checkpoint")}).encode()
        with self._facts_lock:
            self._facts[: len(raw)] = raw
            self._facts_len.value = len(raw)

    def adding(self) -> Dict[str, Any]:
        """``GET /info``'s ``adding`` record."""
        return {"enabled": self.enabled, "endpoint": "POST /normal", "grown_ckpt": self.grown.name,
                "updates": int(self.link.version.value)}

    # ------------------------------------------------------------------ the update

    def _grower_here(self) -> _Grower:
        with self._local:
            if self._grower is None or self._grower_pid != os.getpid() or not self._grower.alive():
                self._grower = _Grower(self.origin, self.grown, self.device, self.batch_size, self._origin_stat)
                self._grower_pid = os.getpid()
            return self._grower

    def update(self, images: List[np.ndarray], names: List[Optional[str]]) -> Tuple[int, Dict[str, Any]]:
        """Add ``images`` (decoded, checked) to the bank: ``(HTTP status, JSON answer)``. Blocks (run it in a thread)."""
        with self.lock:
            version = int(self.link.version.value)
            serving = self.serving if version == 0 else self.grown
            try:
                kind, answer = self._grower_here().call(("add", str(serving), version, images, names))
            except Exception as err:  # noqa: BLE001 - the grower died: nothing was swapped
                log.exception("the grower failed")
                return 500, {"error": "internal_error", "status": 500,
                             "detail": f"the update failed, nothing was changed: {type(err).__name__}: {err}"}
            if kind == "refused":
                return answer["status"], answer
            workers = self.link.workers
            if kind == "grown":
                new_version = version + 1
                self.link.version.value = new_version
                deadline = time.monotonic() + SWAP_WAIT_S
                while self.link.serving(new_version) < workers and time.monotonic() < deadline:
                    time.sleep(0.02)
                facts = answer.pop("facts")
                self._publish(facts)
                serving_now = self.link.serving(new_version)
            else:  # every image was in the bank already: nothing written, nothing swapped
                facts = self.facts()
                serving_now = self.link.serving(version)
            answer.update(bank_size=facts["bank_size"], bank_changed=facts.get("bank_changed"),
                          thresholds=facts.get("thresholds"), checkpoint=facts.get("checkpoint"),
                          workers=workers, workers_serving=serving_now)
            return 200, answer


# ---------------------------------------------------------------------- the grower process


def grower_main(conn: Any, origin: str, grown: str, device: str, batch_size: int, origin_stat: Tuple[int, int]) -> None:
    """The grower: answers ``(id, "add", serving checkpoint, version, images, names)`` until its pipe closes."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C reaches the whole group: the server's shutdown ends this one
    state: Dict[str, Any] = {"detector": None, "loaded": None}
    _remove_leftovers(Path(grown))
    while True:
        try:
            ident, _, serving, version, images, names = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        try:
            answer = _grow(state, Path(origin), Path(grown), device, batch_size, origin_stat, Path(serving), version, images, names)
        except Exception as err:  # noqa: BLE001 - answer, never die: nothing was swapped
            log.exception("the update failed")
            answer = ("refused", {"error": "internal_error", "status": 500,
                                  "detail": f"the update failed, nothing was changed: {type(err).__name__}: {err}"})
        try:
            conn.send((ident, answer))
        except (OSError, BrokenPipeError):
            return


def _remove_leftovers(grown: Path) -> None:
    """Partial files of an update that was killed while it wrote (``.<grown name>.<hex>.part`` and the
    temporary file beside that one)."""
    pattern = re.compile(r"\.?" + re.escape(f".{grown.name}.") + r"[0-9a-f]{12}\.part(\.[0-9a-f]{12}\.tmp)?")
    for path in grown.parent.glob(f".*{grown.name}.*"):
        if pattern.fullmatch(path.name):
            path.unlink(missing_ok=True)


class _Unchanged(Exception):
    """Every image was in the bank already: the grown file stays as it is."""


def _named_note(line: str, names: List[Optional[str]]) -> str:
    """``skipped image 2: ...`` (the detector counts from 0) as ``skipped image 3 of 4 ('c.png'): ...``."""
    def name(match: "re.Match[str]") -> str:
        position = int(match.group(1))
        if position >= len(names):
            return match.group(0)
        label = f" ({names[position]!r})" if names[position] else ""
        return f"image {position + 1} of {len(names)}{label}"

    return re.sub(r"\bimage (\d+)(?=[:)])", name, line) if line.startswith("skipped ") else line


def _grow(state: Dict[str, Any], origin: Path, grown: Path, device: str, batch_size: int, origin_stat: Tuple[int, int],
          serving: Path, version: int, images: List[np.ndarray], names: List[Optional[str]]) -> Tuple[str, Dict[str, Any]]:
    from ..errors import DataError
    from ..files import atomic_path
    from ..inference.detector import Detector

    stat = origin.stat()
    if (stat.st_size, stat.st_mtime_ns) != tuple(origin_stat):
        return "refused", {"error": "checkpoint_changed", "status": 409,
                           "detail": f"{origin.name} changed on disk since the server started: restart the server; "
                                     "nothing was added."}
    if state["loaded"] != (str(serving), version):
        state["detector"] = Detector.from_checkpoint(serving, device=device, batch_size=batch_size)
        state["loaded"] = (str(serving), version)
    detector = state["detector"]
    before = detector.model.bank_size
    # The grown file is the served checkpoint with the grown bank: made from it, it records grown_from = it.
    detector._source = (origin, detector._source[1])
    notes: List[str] = []
    answer: Dict[str, Any] = {}
    try:
        with atomic_path(grown, suffix=".part") as part:  # replaces the grown file only when the block ends well
            new = detector.add_normal(images, save_to=part, say=notes.append)
            added = new.model.bank_size - before
            answer = {"added": added, "skipped": len(images) - added, "notes": [_named_note(line, names) for line in notes]}
            if added == 0:
                raise _Unchanged
    except _Unchanged:
        return "same", answer
    except DataError as err:
        return "refused", {"error": "unprocessable_image", "status": 422, "detail": f"nothing was added: {err}"}
    state["detector"], state["loaded"] = new, (str(grown), version + 1)
    answer["facts"] = bank_facts(new, grown)
    return "grown", answer
