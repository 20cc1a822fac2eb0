"""Export a fitted checkpoint as one ONNX or TorchScript file: preprocessing, backbone, bank, kNN scoring, maps, thresholds.

::

    lightning-ad export --ckpt_path fit.ckpt --format onnx --output spade.onnx [--input_size H W] [--overwrite]

The exported model takes images of ONE fixed size (``input_size``; default: the contract's
``image_size``), as ``uint8`` ``[B, H, W, 3]`` RGB (channels last, any batch size ``B``), and
returns, in this order:

* ``score`` ``[B]`` float32: raw image score (squared feature distance);
* ``normalized_score`` ``[B]`` float64: 0.5 at the image threshold (NaN when it is unknown);
* ``decision`` ``[B]`` bool: ``score >= image_threshold`` (all False when it is unknown);
* ``anomaly_map`` ``[B, H, W]`` float32: raw map at the input size, NaN where the centre
  crop removed the pixel (the rule of :mod:`lightning_ad.detector`);
* ``mask`` ``[B, H, W]`` bool: ``anomaly_map >= pixel_threshold`` (False where not inspected
  or when the threshold is unknown).

Inside, in order:

1. the input contract: resize to ``image_size`` with torch's ``uint8`` bilinear antialiased
   kernel reproduced bit for bit (its int16 fixed-point weights, horizontal pass then
   vertical, each rounded to ``uint8``), as fixed matrices with the centre crop folded in;
   then ``/ 255`` in float32: the model sees the pixels that :class:`~lightning_ad.data.transforms.Preprocess`
   gives, so the export scores an image of that size as :class:`~lightning_ad.detector.Detector` does;
2. the backbone (its own input normalisation included);
3. the kNN scoring, written for export (:class:`ExportableSpade`): exact squared distances
   by the matmul expansion ``|q|^2 - 2 q.g + |g|^2`` to choose the neighbours, the chosen
   ones recomputed as ``sum((q - g)^2)`` (as :mod:`lightning_ad.knn` does), the pixel gallery
   searched one neighbouring training image at a time (memory: one ``[B, P, P]`` block per
   level, ``P`` positions of the level);
4. level maps upsampled, averaged and Gaussian-smoothed as :class:`~lightning_ad.spade.SpadeModel`
   does, then brought to the input size with :func:`~lightning_ad.detector.map_resize_matrices`.

Metadata (JSON): thresholds, the input contract, the exported input size, backbone, levels,
K values, lightning_ad version. ONNX: ``metadata_props`` key ``lightning_ad``;
TorchScript: the extra file ``lightning_ad.json`` (``torch.jit.load(path, _extra_files=...)``).

Wrong inputs: the TorchScript model checks dtype and shape first and raises
``ValueError`` (seen as ``torch.jit.Error`` / ``RuntimeError`` by the caller) with the
expected ``uint8 [B, H, W, 3]``. ONNX Runtime checks the declared input itself before
running: a wrong dtype gives ``INVALID_ARGUMENT : Unexpected input data type. Actual:
(tensor(float)) , expected: (tensor(uint8))`` and a wrong size ``INVALID_ARGUMENT : Got
invalid dimensions for input: images for the following indices index: 1 Got: 100
Expected: 64`` (both ``onnxruntime.capi.onnxruntime_pybind11_state.InvalidArgument``).

Files are written atomically (a temporary file beside the output, then ``os.replace``); an
existing output is never replaced unless ``overwrite=True``. ONNX models whose weights and
bank exceed :data:`ONNX_EXTERNAL_BYTES` (protobuf's 2 GB limit) keep their tensors in an
external data file ``<output>.data`` beside the model (then two files travel together).

ONNX export needs the ``onnx`` package (and ``onnxruntime`` to run the result): the
``export`` extra, ``pip install lightning-ad[export]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data.transforms import as_hw
from .detector import crop_offsets, saved_contract, load_model, map_resize_matrices, scoring_facts
from .errors import ConfigurationError
from .filters import _symmetric_index, gaussian_kernel1d
from .spade import SpadeModel, image_score_from_parts, map_part_of

__all__ = [
    "FORMATS",
    "OUTPUT_NAMES",
    "ONNX_EXTERNAL_BYTES",
    "ExportableSpade",
    "Uint8Preprocess",
    "uint8_resize_weights",
    "build_exportable",
    "export_metadata",
    "export_detector",
    "add_export_arguments",
    "export_main",
]

FORMATS = ("onnx", "torchscript")
INPUT_NAME = "images"
OUTPUT_NAMES = ("score", "normalized_score", "decision", "anomaly_map", "mask")
#: Above this many bytes of weights and bank, ONNX tensors go to an external data file.
ONNX_EXTERNAL_BYTES = 1_800_000_000
#: ONNX operator set used.
OPSET = 17
METADATA_KEY = "lightning_ad"


# ---------------------------------------------------------------------- the uint8 resize


def _float_resize_weights(n_in: int, n_out: int) -> Tensor:
    """``[n_out, n_in]`` float64 weights of torch's antialiased bilinear resize along one axis.

    Read off ``F.interpolate`` itself (a 2-wide axis: torch's antialiased kernel is wrong
    on 1-wide inputs).
    """
    eye = torch.eye(n_in, dtype=torch.float64).reshape(1, n_in, n_in, 1).expand(1, n_in, n_in, 2).contiguous()
    out = F.interpolate(eye, size=(n_out, 2), mode="bilinear", antialias=True, align_corners=False)
    return out[0, :, :, 0].T.contiguous()


def uint8_resize_weights(n_in: int, n_out: int) -> Tuple[Tensor, int]:
    """Integer weights ``[n_out, n_in]`` (float64 holding int16 values) and their precision ``p``.

    torch's ``uint8`` antialiased bilinear kernel computes, per axis, ``clamp((sum(w_int *
    x) + 2^(p-1)) >> p, 0, 255)`` with ``w_int = floor(0.5 + w 2^p)`` and ``p`` the largest
    precision below 22 at which ``2 w_max 2^p`` stays under ``2^15``.
    """
    weights = _float_resize_weights(n_in, n_out)
    w_max = float(weights.max())
    precision = 0
    while precision < 22 and int(0.5 + w_max * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    return torch.floor(0.5 + weights * (1 << precision)), precision


# ---------------------------------------------------------------------- the model


class Uint8Preprocess(nn.Module):
    """The input contract for one input size: uint8 ``[B, H, W, 3]`` -> float32 ``[B, 3, h, w]`` in [0, 1].

    Bit for bit what :class:`~lightning_ad.data.transforms.Preprocess` serves (torch's uint8
    antialiased bilinear resize: horizontal pass, rounded to uint8, then vertical pass;
    centre crop; ``/ 255``), as two fixed integer-weight matrices applied in float64 (exact:
    the sums stay far below 2^53). The crop is folded into the matrices.
    """

    def __init__(self, contract: Dict[str, Any], input_size: Tuple[int, int]) -> None:
        super().__init__()
        height, width = int(input_size[0]), int(input_size[1])
        resized = [int(v) for v in contract["image_size"]]
        crop = [int(v) for v in (contract["crop_size"] or resized)]
        top, left = crop_offsets(resized, crop)
        # torch skips the pass of an axis whose size does not change (a copy)
        self.resize_w = width != resized[1]
        self.resize_h = height != resized[0]
        qw, pw = uint8_resize_weights(width, resized[1]) if self.resize_w else (torch.eye(width, dtype=torch.float64), 0)
        qh, ph = uint8_resize_weights(height, resized[0]) if self.resize_h else (torch.eye(height, dtype=torch.float64), 0)
        self.register_buffer("qw_t", qw[left : left + crop[1]].T.contiguous())  # [W, w]
        self.register_buffer("qh", qh[top : top + crop[0]].contiguous())  # [h, H]
        self.half_w, self.scale_w = (float(1 << (pw - 1)) if pw else 0.0), 1.0 / float(1 << pw)
        self.half_h, self.scale_h = (float(1 << (ph - 1)) if ph else 0.0), 1.0 / float(1 << ph)

    def forward(self, images: Tensor) -> Tensor:
        x = images.permute(0, 3, 1, 2).to(torch.float64)  # [B, 3, H, W]
        x = torch.matmul(x, self.qw_t)  # [B, 3, H, w]
        if self.resize_w:
            x = torch.floor((x + self.half_w) * self.scale_w).clamp(0.0, 255.0)
        x = torch.matmul(self.qh, x)  # [B, 3, h, w]
        if self.resize_h:
            x = torch.floor((x + self.half_h) * self.scale_h).clamp(0.0, 255.0)
        return x.to(torch.float32) / 255.0


class ExportableSpade(nn.Module):
    """A fitted :class:`SpadeModel` with the input contract and thresholds, for one input size.

    ``forward(images uint8 [B, H, W, 3])`` returns the five outputs of the module docstring.
    Everything is fixed at construction (matrices, indices, thresholds), so the module
    traces into a graph without Python control flow on data.
    """

    def __init__(self, model: SpadeModel, contract: Dict[str, Any], input_size: Tuple[int, int],
                 image_threshold: float, pixel_threshold: float) -> None:
        super().__init__()
        model.require_fitted()
        height, width = int(input_size[0]), int(input_size[1])
        resized = [int(v) for v in contract["image_size"]]
        crop = [int(v) for v in (contract["crop_size"] or resized)]
        self.input_size = (height, width)
        self.crop = (crop[0], crop[1])
        # 1. preprocessing
        self.preprocess = Uint8Preprocess(contract, self.input_size)
        # 2. backbone
        self.backbone = model.backbone
        # 3. bank and kNN settings
        bank = model.bank
        self.register_buffer("bank_pooled", bank.pooled.float().contiguous())
        self.register_buffer("bank_pooled_sq", (bank.pooled.float() ** 2).sum(dim=1))
        self.image_k, self.gallery_k, self.kappa = model.image_k, model.gallery_k, model.kappa
        self.k_images = max(model.image_k, model.gallery_k)
        self.level_shapes: List[Tuple[int, int, int]] = []
        for position, level in enumerate(bank.levels_hwc()):
            rows = level.float()  # [N, H_l, W_l, C_l]
            n, h_l, w_l, c_l = rows.shape
            self.register_buffer(f"level{position}", rows.reshape(n, h_l * w_l * c_l).contiguous())
            self.register_buffer(f"level{position}_sq", (rows.reshape(n, h_l * w_l, c_l) ** 2).sum(dim=-1))
            self.level_shapes.append((int(h_l), int(w_l), int(c_l)))
        if max(model.image_k, model.gallery_k) > model.bank_size:
            raise ConfigurationError(f"image_k/gallery_k exceed the {model.bank_size} training images of the bank")
        # 4. smoothing and maps at the input size
        self.sigma = float(model.sigma)
        if self.sigma > 0:
            kernel = gaussian_kernel1d(self.sigma)
            radius = (kernel.numel() - 1) // 2
            self.register_buffer("blur_kernel_w", kernel.view(1, 1, 1, -1).clone())
            self.register_buffer("blur_kernel_h", kernel.view(1, 1, -1, 1).clone())
            self.register_buffer("blur_index_w", _symmetric_index(crop[1], radius, torch.device("cpu")))
            self.register_buffer("blur_index_h", _symmetric_index(crop[0], radius, torch.device("cpu")))
        rows_m, cols_m, valid = map_resize_matrices((height, width), contract)
        self.register_buffer("map_rows", rows_m.float())  # [H, h]
        self.register_buffer("map_cols_t", cols_m.float().T.contiguous())  # [w, W]
        self.register_buffer("map_valid", valid)  # [H, W]
        self.image_threshold = float(image_threshold)
        self.pixel_threshold = float(pixel_threshold)
        # 5. the image score: DN2, a statistic of the served map, or both over their learned scales
        self.image_score, self.image_score_q = model.image_score, float(model.image_score_q)
        self.dn2_scale, self.map_scale = float(model.dn2_scale), float(model.map_scale)
        image_score_from_parts(self.image_score, torch.zeros(1), torch.zeros(1), self.dn2_scale, self.map_scale)  # refuses unlearned scales

    # ------------------------------------------------------------------ parts

    def image_scores(self, dn2: Tensor, maps: Tensor) -> Tensor:
        """``[B]`` the checkpoint's image score from DN2 ``[B]`` and the served maps ``[B, h, w]``."""
        part = None if self.image_score == "dn2" else map_part_of(self.image_score, maps, self.image_score_q)
        return image_score_from_parts(self.image_score, dn2, part, self.dn2_scale, self.map_scale)

    def nearest_images(self, pooled: Tensor) -> Tuple[Tensor, Tensor]:
        """Image scores ``[B]`` and the ``gallery_k`` nearest bank rows ``[B, gallery_k]``."""
        pooled = pooled.float()
        approx = (pooled * pooled).sum(dim=1, keepdim=True) - 2.0 * pooled @ self.bank_pooled.T + self.bank_pooled_sq
        _, index = approx.topk(self.k_images, dim=1, largest=False, sorted=True)  # [B, k]
        chosen = F.embedding(index, self.bank_pooled)  # [B, k, D]
        diff = chosen - pooled.unsqueeze(1)
        exact = (diff * diff).sum(dim=-1)
        exact, order = exact.topk(self.k_images, dim=1, largest=False, sorted=True)
        index = index.gather(1, order)
        return exact[:, : self.image_k].mean(dim=1), index[:, : self.gallery_k]

    def level_map(self, position: int, fmap: Tensor, neighbours: Tensor) -> Tensor:
        """``[B, H_l, W_l]``: mean squared distance of each position to its kappa nearest gallery features."""
        h_l, w_l, c_l = self.level_shapes[position]
        positions = h_l * w_l
        bank = getattr(self, f"level{position}")  # [N, P * C]
        bank_sq = getattr(self, f"level{position}_sq")  # [N, P]
        queries = fmap.float().permute(0, 2, 3, 1).flatten(1, 2)  # [B, P, C]
        q_sq = (queries * queries).sum(dim=-1, keepdim=True)  # [B, P, 1]
        values, where = [], []
        for j in range(self.gallery_k):
            rows = neighbours[:, j]  # [B]
            gallery = F.embedding(rows, bank).reshape(-1, positions, c_l)  # [B, P, C]
            g_sq = F.embedding(rows, bank_sq).unsqueeze(1)  # [B, 1, P]
            block = q_sq - 2.0 * torch.matmul(queries, gallery.transpose(1, 2)) + g_sq  # [B, P, P]
            value, pos = block.topk(self.kappa, dim=-1, largest=False, sorted=False)
            values.append(value)
            where.append(pos + j * positions)
        value = torch.cat(values, dim=-1)
        index = torch.cat(where, dim=-1)
        _, best = value.topk(self.kappa, dim=-1, largest=False, sorted=False)
        index = index.gather(-1, best)  # [B, P, kappa]: gallery_slot * P + position
        slot = torch.div(index, positions, rounding_mode="floor")
        image_row = neighbours.gather(1, slot.flatten(1)).view_as(slot)
        flat = image_row * positions + (index - slot * positions)  # row of bank.reshape(N * P, C)
        chosen = F.embedding(flat, bank.reshape(-1, c_l))  # [B, P, kappa, C]
        diff = chosen - queries.unsqueeze(2)
        distance = (diff * diff).sum(dim=-1).mean(dim=-1)  # [B, P]
        return distance.reshape(-1, h_l, w_l)

    def blur(self, maps: Tensor) -> Tensor:
        if self.sigma <= 0:
            return maps
        x = maps.unsqueeze(1).index_select(3, self.blur_index_w)
        x = F.conv2d(x, self.blur_kernel_w)
        x = x.index_select(2, self.blur_index_h)
        x = F.conv2d(x, self.blur_kernel_h)
        return x.squeeze(1)

    def forward(self, images: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        x = self.preprocess(images)
        pyramid, pooled = self.backbone(x)
        scores, neighbours = self.nearest_images(pooled)
        up = [F.interpolate(self.level_map(i, fmap, neighbours).unsqueeze(1), size=self.crop, mode="bilinear",
                            align_corners=False) for i, fmap in enumerate(pyramid)]
        maps = self.blur(torch.stack(up).mean(dim=0).squeeze(1))  # [B, h, w]
        scores = self.image_scores(scores, maps)
        full = torch.matmul(torch.matmul(self.map_rows, maps), self.map_cols_t)  # [B, H, W]
        full = torch.where(self.map_valid, full, torch.full_like(full, float("nan")))
        raw = scores.to(torch.float64)
        t = self.image_threshold
        if math.isfinite(t) and t > 0:
            safe = torch.where(raw > 0, raw, torch.ones_like(raw))
            normalized = torch.where(raw <= t, raw.clamp_min(0.0) / (2.0 * t), 1.0 - t / (2.0 * safe))
        else:
            normalized = torch.full_like(raw, float("nan"))
        decision = raw >= t if math.isfinite(t) else torch.zeros_like(raw, dtype=torch.bool)
        mask = full >= self.pixel_threshold if math.isfinite(self.pixel_threshold) else torch.zeros_like(full, dtype=torch.bool)
        return scores.float(), normalized, decision, full, mask


#: dtypes a wrong input is named by in the TorchScript error (those this torch has).
_DTYPE_NAMES = ("float32", "float64", "float16", "bfloat16", "int8", "int16", "int32", "int64", "uint16", "uint32",
                "uint64", "bool", "complex64", "complex128")


def _dtype_code(x: Tensor) -> int:
    return x.dtype  # TorchScript's number of the dtype (a dtype is an int inside TorchScript)


class _Checked(nn.Module):
    """TorchScript wrapper: refuses a wrong dtype or shape with a message, then runs the traced model."""

    def __init__(self, core: nn.Module, height: int, width: int) -> None:
        super().__init__()
        self.core = core
        self.height = height
        self.width = width
        self.message = (f"lightning_ad export: images must be uint8 [B, {height}, {width}, 3] (RGB, channels last); "
                        "this model was exported for that input size (lightning-ad export --input_size H W).")
        # inside TorchScript str(dtype) is a number: the names of the numbers, for the error
        dtypes = [getattr(torch, name) for name in _DTYPE_NAMES if isinstance(getattr(torch, name, None), torch.dtype)]
        code = torch.jit.script(_dtype_code)
        self.dtype_codes: List[int] = [int(code(torch.empty(0, dtype=dtype))) for dtype in dtypes]
        self.dtype_names: List[str] = [str(dtype) for dtype in dtypes]

    def forward(self, images: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        if images.dtype != torch.uint8:
            name = "number " + str(images.dtype)
            for i in range(len(self.dtype_codes)):
                if images.dtype == self.dtype_codes[i]:
                    name = self.dtype_names[i]
            raise ValueError(self.message + " Got dtype " + name + ".")
        if images.dim() != 4 or images.size(1) != self.height or images.size(2) != self.width or images.size(3) != 3:
            raise ValueError(self.message + " Got shape " + str(images.shape) + ".")
        return self.core(images)


# ---------------------------------------------------------------------- building and writing


def export_metadata(model: SpadeModel, contract: Dict[str, Any], input_size: Tuple[int, int],
                    image_threshold: float, pixel_threshold: float, fmt: str) -> Dict[str, Any]:
    """The JSON facts stored in the exported file."""
    return {
        **scoring_facts(model, image_threshold, pixel_threshold),
        "format": fmt,
        "input": {"name": INPUT_NAME, "dtype": "uint8", "layout": "[B, H, W, 3] RGB", "size": list(input_size)},
        "contract": {"image_size": list(contract["image_size"]),
                     "crop_size": list(contract["crop_size"]) if contract.get("crop_size") else None},
        "outputs": list(OUTPUT_NAMES),
    }


def build_exportable(ckpt_path: Union[str, Path], input_size: Optional[Sequence[int]] = None
                     ) -> Tuple[ExportableSpade, Dict[str, Any]]:
    """The :class:`ExportableSpade` of a checkpoint (CPU, eval) and its metadata (format left ``None``)."""
    requested = as_hw(list(input_size), "input_size") if input_size is not None else None
    model, hp, meta = load_model(ckpt_path)
    contract = saved_contract(meta)
    size = requested if requested is not None else tuple(contract["image_size"])
    image_t = float(hp["image_threshold"]) if hp.get("image_threshold") is not None else float(model.image_threshold)
    pixel_t = float(hp["pixel_threshold"]) if hp.get("pixel_threshold") is not None else float(model.pixel_threshold)
    module = ExportableSpade(model, contract, size, image_t, pixel_t).eval()
    return module, export_metadata(model, contract, size, image_t, pixel_t, fmt="")


def _check_output(output: Path, overwrite: bool) -> None:
    if output.exists() and not overwrite:
        raise ConfigurationError(f"export output {str(output)!r} already exists: pass overwrite=True (--overwrite) to replace it.")
    if output.exists() and output.is_dir():
        raise ConfigurationError(f"export output {str(output)!r} is a folder: name a file.")
    if not output.parent.is_dir():
        raise ConfigurationError(f"export output folder {str(output.parent)!r} does not exist.")


def _file_mode() -> int:
    """The permission of every output (what open() gives under the umask), as the prediction files get."""
    from .callbacks import FILE_MODE

    return FILE_MODE


def _temp_path(output: Path, suffix: str) -> Path:
    handle, name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=suffix, dir=output.parent)
    os.close(handle)
    os.chmod(name, _file_mode())  # mkstemp creates 0600
    return Path(name)


def _write_torchscript(module: ExportableSpade, metadata: Dict[str, Any], output: Path) -> None:
    height, width = module.input_size
    example = torch.zeros(1, height, width, 3, dtype=torch.uint8)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on constant shapes: the input size is fixed by design
        traced = torch.jit.trace(module, (example,), check_trace=False)
        scripted = torch.jit.script(_Checked(traced, height, width))
    temp = _temp_path(output, ".pt")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.jit.save.* is deprecated", category=FutureWarning)
            torch.jit.save(scripted, str(temp), _extra_files={"lightning_ad.json": json.dumps(metadata)})
        os.replace(temp, output)
    finally:
        if temp.exists():
            temp.unlink()


def _write_onnx(module: ExportableSpade, metadata: Dict[str, Any], output: Path) -> None:
    try:
        import onnx
    except ImportError:
        raise ConfigurationError("ONNX export needs the onnx package: pip install 'lightning-ad[export]' "
                                 "(onnx, onnxruntime).") from None
    height, width = module.input_size
    example = torch.zeros(1, height, width, 3, dtype=torch.uint8)
    size = sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))
    external = size > ONNX_EXTERNAL_BYTES
    with tempfile.TemporaryDirectory(prefix=".lightning_ad_export_", dir=output.parent) as work:
        raw = Path(work) / "model.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, (example,), str(raw), dynamo=False, opset_version=OPSET, input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES), do_constant_folding=True,
                dynamic_axes={INPUT_NAME: {0: "batch"}, **{name: {0: "batch"} for name in OUTPUT_NAMES}},
            )
        proto = onnx.load(str(raw), load_external_data=True)
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
        proto.doc_string = "lightning_ad SPADE detector: uint8 [B, H, W, 3] -> " + ", ".join(OUTPUT_NAMES)
        staged = Path(work) / output.name
        if external:
            onnx.save_model(proto, str(staged), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=output.name + ".data", size_threshold=1024)
            data = Path(work) / (output.name + ".data")
            os.chmod(data, _file_mode())  # onnx creates it 0600
            os.replace(data, output.parent / (output.name + ".data"))
        else:
            onnx.save_model(proto, str(staged))
        os.replace(staged, output)


def export_detector(ckpt_path: Union[str, Path], fmt: str, output: Union[str, Path],
                    input_size: Optional[Sequence[int]] = None, overwrite: bool = False) -> Dict[str, Any]:
    """Write the checkpoint's detector as one ``fmt`` file (``"onnx"`` or ``"torchscript"``) at ``output``.

    Args:
        ckpt_path: a checkpoint written by ``lightning-ad fit``.
        fmt: ``"onnx"`` or ``"torchscript"``.
        output: the file to write (its folder must exist).
        input_size: ``(H, W)`` of the images the exported model takes; default the
            contract's ``image_size``.
        overwrite: replace an existing ``output``.

    Returns:
        The metadata written into the file.

    Raises:
        ConfigurationError: unknown format, bad input size, an existing output without
            ``overwrite``, a missing output folder, onnx not installed.
        CheckpointError: the checkpoint is missing, not lightning_ad's, or not fitted.
    """
    if fmt not in FORMATS:
        raise ConfigurationError(f"export format {fmt!r}: choose one of {list(FORMATS)} (--format).")
    output = Path(output)
    _check_output(output, overwrite)
    if input_size is not None:
        as_hw(list(input_size), "input_size")
    module, metadata = build_exportable(ckpt_path, input_size)
    metadata["format"] = fmt
    if fmt == "torchscript":
        _write_torchscript(module, metadata, output)
    else:
        _write_onnx(module, metadata, output)
    return metadata


# ---------------------------------------------------------------------- command line


def add_export_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``lightning-ad export``."""
    parser.add_argument("--ckpt_path", required=True, help="checkpoint written by lightning-ad fit")
    parser.add_argument("--format", required=True, choices=FORMATS, dest="format",
                        help="onnx (runs in onnxruntime) or torchscript (torch.jit.load, no lightning_ad needed)")
    parser.add_argument("--output", required=True, help="file to write (atomically)")
    parser.add_argument("--input_size", nargs=2, type=int, metavar=("H", "W"), default=None,
                        help="height and width of the images the exported model takes (default: the "
                             "checkpoint's image_size)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    return parser


def export_main(argv: Optional[Sequence[str]] = None) -> int:
    """``lightning-ad export ...``: errors are :mod:`lightning_ad.errors` exceptions (the CLI prints them)."""
    parser = add_export_arguments(argparse.ArgumentParser(
        prog="lightning-ad export", description="Export a fitted checkpoint as one ONNX or TorchScript file."))
    args = parser.parse_args(None if argv is None else list(argv))
    metadata = export_detector(args.ckpt_path, args.format, args.output, args.input_size, args.overwrite)
    height, width = metadata["input"]["size"]
    print(f"wrote {args.output} ({args.format}): uint8 [B, {height}, {width}, 3] -> {', '.join(OUTPUT_NAMES)}; "
          f"thresholds {metadata['thresholds']}")
    return 0
