"""A lightning_ad checkpoint: what it holds beyond the state dict, the checks on it, and the way from its file to a model.

A fitted checkpoint carries a ``lightning_ad`` section: the format, the backbone and
levels the bank was fitted with, the bank's size and input size, the input contract.
:func:`read_checkpoint` opens a file with ``weights_only=True`` and refuses anything that is not a complete
lightning_ad checkpoint; :func:`check_compatible` refuses a bank that would not fit the
configured model. Both raise :class:`~lightning_ad.errors.CheckpointError` naming the
file or setting and what to do.

From a file to a model, in this module only: :func:`load_model` reads the file, checks it, builds the
:class:`~lightning_ad.core.spade.SpadeModel` of its settings (:func:`model_settings`) and loads its state;
:func:`fitted_contract` is its input contract and :func:`thresholds_in_use` its thresholds. The
:class:`~lightning_ad.inference.detector.Detector` and the export start from these three.
"""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from ..core.spade import SpadeModel
from ..data.contract import ContractLike, InputContract
from ..errors import CheckpointError

__all__ = [
    "META_KEY", "FORMAT", "section", "SCORING_SETTINGS", "read_checkpoint", "check_compatible", "check_usable", "input_contract",
    "contract_mismatch", "scoring_changes", "saved_settings", "fitted_scoring", "LEGACY_SCORING", "thresholds_in_use",
    "write_grown", "radius_record", "file_sha256", "fitted_contract", "saved_contract", "model_settings", "load_model",
]

#: Key of the lightning_ad section of a checkpoint.
META_KEY = "lightning_ad"
#: Version of the section's layout (1: round 1; 2: bank in a MemoryBank).
FORMAT = 2


def meta_section(model: Any, thresholds: Dict[str, Any], contract: Optional[Dict[str, Any]],
                 datamodule: Optional[Dict[str, Any]], scoring: Optional[Dict[str, Any]] = None,
                 radius: Optional[Dict[str, Any]] = None, changed: Optional[str] = None) -> Dict[str, Any]:
    """The lightning_ad section of a checkpoint of ``model`` (a SpadeModel). ``scoring``: the values of the
    :data:`SCORING_SETTINGS` its thresholds were made with (Lightning's ``load_from_checkpoint(**overrides)``
    rewrites the checkpoint's hyper-parameters before the module sees them; this copy it leaves alone).
    ``radius``: the search radius in use and, where ``auto`` decided it, the evidence
    (:meth:`~lightning_ad.core.radius.RadiusChoice.as_dict`). ``changed``: when the bank last changed (ISO 8601)."""
    return {
        "format": FORMAT, "backbone": model.backbone_name, "layers": list(model.layers),
        "aggregate_levels": list(model.aggregate_levels), "bank_size": model.bank_size, "bank_augment": model.bank_augment,
        "image_size": list(model.image_size), "thresholds": dict(thresholds), "input": contract, "datamodule": datamodule,
        "bank_storage": model.bank.storage, "bank_sharding": model.bank.sharding,
        "search_radius": dict(radius or {"setting": model.search_radius_setting}), "scoring": dict(scoring or {}),
        "bank_changed": changed,
    }


def radius_record(model: Any) -> Dict[str, Any]:
    """The checkpoint's ``search_radius`` record of ``model``: the setting, and where ``auto`` decided, the evidence."""
    if model.search_radius_setting == "auto" and getattr(model, "radius_choice", None) is not None:
        return model.radius_choice.as_dict()
    return {"setting": model.search_radius_setting}


def thresholds_in_use(model: Any, hyper_parameters: Dict[str, Any], meta: Dict[str, Any]) -> Any:
    """The image and pixel thresholds a checkpoint's model decides with (raw; NaN: unknown): the model's
    buffers, where set by hand or learned. Checkpoints that predate the record kept a hand-set threshold in
    their hyper-parameters only: that one wins there, as it did."""
    from ..core.thresholds import Thresholds

    recorded = meta.get("thresholds") or {}
    values = []
    for level in ("image", "pixel"):
        given = hyper_parameters.get(f"{level}_threshold")
        values.append(float(given) if given is not None and level not in recorded else float(getattr(model, f"{level}_threshold")))
    return Thresholds(*values)


def file_sha256(path: Union[str, Path]) -> str:
    """The SHA-256 of a file's bytes, hex (read in 1 MiB blocks)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_grown(source: Path, target: Path, model: Any, thresholds: Dict[str, Any], changed: str) -> None:
    """Write ``target``: the checkpoint ``source`` with the bank, thresholds and learned values of ``model`` (a grown
    SpadeModel), atomically; ``source`` is read, never written. The section records ``grown_from`` (``source``) and
    ``grown_from_sha256`` (its content), so that a reader can tell a grown file from a stale one."""
    from ..files import atomic_write

    checkpoint = read_checkpoint(source)
    state = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("model.")}
    state.update({f"model.{k}": v.detach().cpu() for k, v in model.state_dict().items()})
    meta = dict(checkpoint[META_KEY])
    meta.update(bank_size=model.bank_size, image_size=list(model.image_size), thresholds=dict(thresholds),
                search_radius=radius_record(model), bank_changed=changed, grown_from=str(source),
                grown_from_sha256=file_sha256(source))
    checkpoint.update(state_dict=state)
    checkpoint[META_KEY] = meta
    atomic_write(target, lambda handle: torch.save(checkpoint, handle))


def threshold_source(method: str, bank_images: int, train_images: Optional[int]) -> Dict[str, Any]:
    """Where fit's thresholds come from: the method, and whether the bank holds the whole training set."""
    partial = train_images is not None and bank_images < train_images
    return {"method": method, "bank_images": bank_images, "train_images": train_images, "partial_bank": partial}


def read_checkpoint(path: Union[str, Path]) -> Dict[str, Any]:
    """The checkpoint dict at ``path`` (on the CPU, ``weights_only=True``), with its lightning_ad section checked."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist (--ckpt_path).")
    try:
        checkpoint = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - any failure means the file is unusable
        raise CheckpointError(
            f"checkpoint {str(path)!r} cannot be read ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
            "Is it a complete .ckpt file written by lightning-ad fit?"
        ) from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get(META_KEY), dict):
        raise CheckpointError(f"checkpoint {str(path)!r} was not written by lightning_ad (no '{META_KEY}' section).")
    return checkpoint


def section(checkpoint: Dict[str, Any]) -> Dict[str, Any]:
    """The lightning_ad section of a loaded checkpoint dict, or :class:`CheckpointError`."""
    meta = checkpoint.get(META_KEY)
    if not isinstance(meta, dict):
        raise CheckpointError(f"this checkpoint was not written by lightning_ad's Spade (no '{META_KEY}' section).")
    return meta


def check_compatible(meta: Dict[str, Any], backbone: str, layers: Sequence[int], aggregate_levels: Sequence[int],
                     source: str = "the checkpoint", bank_augment: str = "none") -> None:
    """Refuse a bank fitted with another backbone, other levels, other aggregated levels or other views
    (``bank_augment``) than the configured ones (a checkpoint without ``aggregate_levels`` or ``bank_augment``
    predates the option: none)."""
    problems = []
    if meta.get("backbone") != backbone:
        problems.append(f"backbone {meta.get('backbone')!r} (configured: {backbone!r})")
    if list(meta.get("layers", [])) != list(layers):
        problems.append(f"layers {list(meta.get('layers', []))} (configured: {list(layers)})")
    aggregated = sorted(meta.get("aggregate_levels", []))
    if aggregated != sorted(aggregate_levels):
        problems.append(f"aggregate_levels {aggregated} (configured: {sorted(aggregate_levels)})")
    if meta.get("bank_augment", "none") != bank_augment:
        problems.append(f"bank_augment {meta.get('bank_augment', 'none')!r} (configured: {bank_augment!r})")
    if problems:
        raise CheckpointError(
            f"{source}'s bank was fitted with " + " and ".join(problems)
            + ". Configure the model the same way (--model.backbone / --model.layers / --model.aggregate_levels / "
            "--model.bank_augment) or fit again."
        )


def check_usable(meta: Dict[str, Any], fitting: bool) -> None:
    """Refuse resuming a fit, and a checkpoint without a complete bank."""
    if fitting:
        complete = "the bank was complete" if meta.get("bank_size") else "before the bank was complete"
        raise CheckpointError(
            f"fit cannot resume from a checkpoint (this one was saved {complete}): SPADE builds its bank in "
            "one pass. Run fit again without ckpt_path."
        )
    if not meta.get("bank_size"):
        raise CheckpointError(
            "this checkpoint holds no memory bank: it was saved before fit completed (an interrupted fit, "
            "or a checkpoint saved during the pass). Use the checkpoint written at the end of fit, or fit again."
        )


#: Model settings that change scores: a checkpoint's thresholds hold only for the values it was fitted with.
#: (``image_threshold_samples`` sets the image threshold and, for ``combined``, the scales of its parts.)
SCORING_SETTINGS = ("image_k", "gallery_k", "kappa", "sigma", "image_score", "image_score_q", "image_threshold_samples",
                    "search_radius", "pixel_distance", "level_balance", "level_weights", "few_shot_below")
#: Settings that older checkpoints do not name, with the value they were fitted with (``aggregate_levels`` is the
#: bank's: checked by :func:`check_compatible`).
LEGACY_SCORING = {"image_score": "dn2", "image_score_q": 0.01, "image_threshold_samples": None, "search_radius": None,
                  "pixel_distance": "squared", "level_balance": "none", "level_weights": None, "aggregate_levels": [],
                  "few_shot_below": 0}


def saved_settings(hyper_parameters: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """A checkpoint's ``hyper_parameters``, with the scoring settings it predates at the values it used."""
    return {**LEGACY_SCORING, **(hyper_parameters or {})}


def fitted_scoring(checkpoint: Dict[str, Any]) -> Dict[str, Any]:
    """The scoring settings a checkpoint's thresholds were made with: its lightning_ad section's record, else
    (checkpoints before the record) its hyper-parameters, with the settings it predates at the values it used."""
    recorded = section(checkpoint).get("scoring")
    return saved_settings(recorded if recorded else checkpoint.get("hyper_parameters"))


def input_contract(datamodule: Any) -> Optional[Dict[str, Any]]:
    """``{"image_size": [H, W], "crop_size": [h, w] or None}`` of a datamodule with a ``preprocess``
    (resize, then centre-crop; None: no crop), else None (the dict form of
    :meth:`InputContract.from_preprocess <lightning_ad.data.contract.InputContract.from_preprocess>`)."""
    preprocess = getattr(datamodule, "preprocess", None)
    if preprocess is None:
        return None
    return InputContract.from_preprocess(preprocess).as_dict()


def contract_mismatch(saved: Optional[ContractLike], current: Optional[ContractLike]) -> Optional[str]:
    """An error message when a datamodule prepares images otherwise than the checkpoint's fit did (contracts in either
    form)."""
    saved, current = (c.as_dict() if isinstance(c, InputContract) else c for c in (saved, current))
    if not saved or not current or saved == current:
        return None
    return (
        f"the data is prepared with image_size={current['image_size']}, crop_size={current['crop_size']} but the "
        f"checkpoint's bank and thresholds were fitted with image_size={saved['image_size']}, crop_size="
        f"{saved['crop_size']}: scores would not be comparable. Leave --data.image_size/--data.crop_size unset "
        "(the checkpoint's are used) or set them to the checkpoint's values, or fit again."
    )


def scoring_changes(saved: Dict[str, Any], current: Dict[str, Any], bank_size: Optional[int] = None) -> List[str]:
    """``"name saved -> current"`` for each scoring setting that differs. ``image_threshold_samples`` counts
    only where it selects other training images: not under ``dn2``, nor between values at or above
    ``bank_size`` (None counts as all)."""
    def image_rows(value: Optional[int]) -> Optional[int]:
        if value is None:
            return bank_size
        return value if bank_size is None else min(value, bank_size)

    changes = []
    for name in SCORING_SETTINGS:
        if name not in saved or name not in current or saved[name] == current[name]:
            continue
        if name == "image_threshold_samples" and (current.get("image_score") == "dn2"
                                                  or image_rows(saved[name]) == image_rows(current[name])):
            continue
        if name == "few_shot_below" and bank_size is not None and (bank_size < saved[name]) == (bank_size < current[name]):
            continue  # the bank is few-shot under both, or under neither
        changes.append(f"{name} {saved[name]!r} -> {current[name]!r}")
    return changes


# ---------------------------------------------------------------------- from a checkpoint to a model


def fitted_contract(meta: Dict[str, Any]) -> InputContract:
    """The :class:`~lightning_ad.data.contract.InputContract` of a checkpoint's lightning_ad section.

    Checkpoints written before the contract was recorded served the bank's size
    (``meta["image_size"]``) with no crop.
    """
    contract = meta.get("input")
    if isinstance(contract, dict) and contract.get("image_size") is not None:
        return InputContract.from_dict(contract)
    size = meta.get("image_size")
    if not size or len(size) != 2 or not all(int(v) > 0 for v in size):
        raise CheckpointError("this checkpoint records no input size (lightning_ad section without 'image_size'): fit again.")
    return InputContract(size, None)


def saved_contract(meta: Dict[str, Any]) -> Dict[str, Any]:
    """:func:`fitted_contract` in its dict form ``{"image_size": [H, W], "crop_size": [h, w] or None}``."""
    return fitted_contract(meta).as_dict()


def model_settings(hyper_parameters: Dict[str, Any], meta: Dict[str, Any]) -> Dict[str, Any]:
    """:class:`SpadeModel` keyword arguments of a checkpoint: every parameter of its signature that the
    checkpoint's hyper-parameters name (scoring settings older checkpoints predate at the values they
    were fitted with; ``knn_chunk_bytes`` is ``chunk_bytes``), the others at their defaults; weights
    ``random`` (the state dict brings the real ones). Backbone and levels fall back to the lightning_ad
    section of checkpoints that predate their hyper-parameters."""
    saved = {**saved_settings(hyper_parameters), "weights": "random"}
    if "knn_chunk_bytes" in saved:
        saved["chunk_bytes"] = saved["knn_chunk_bytes"]
    for name in ("backbone", "layers"):
        if name not in saved and name in meta:
            saved[name] = meta[name]
    names = set(inspect.signature(SpadeModel).parameters) - {"backbone_module"}
    return {name: saved[name] for name in names if name in saved}


def load_model(path: Union[str, Path]) -> Tuple[SpadeModel, Dict[str, Any], Dict[str, Any]]:
    """``(model, hyper_parameters, lightning_ad section)`` of a fitted checkpoint (CPU, eval mode).

    Raises :class:`~lightning_ad.errors.CheckpointError` for a missing file, a file not
    written by lightning_ad, or a checkpoint without a complete bank.
    """
    checkpoint = read_checkpoint(path)
    meta = checkpoint[META_KEY]
    check_usable(meta, fitting=False)
    hp = dict(checkpoint.get("hyper_parameters") or {})
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} holds no state_dict.")
    try:
        with warnings.catch_warnings():
            # the state dict brings the trained weights: the random initialisation is never used
            warnings.filterwarnings("ignore", message=r".*uses RANDOM weights.*", category=UserWarning)
            model = SpadeModel(**model_settings(hp, meta))
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - hyper-parameters this version cannot build
        raise CheckpointError(f"checkpoint {str(path)!r}: cannot build its model ({type(err).__name__}: {err}).") from None
    check_compatible(meta, model.backbone_name, model.layers, model.aggregate_levels, source=f"checkpoint {str(path)!r}",
                     bank_augment=model.bank_augment)
    own = {key[len("model."):]: value for key, value in state.items() if key.startswith("model.")}
    try:
        model.load_state_dict(own)
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {str(path)!r}: its state dict does not load ({str(err).splitlines()[0][:300]}).") from None
    model.eval()
    return model, hp, meta
