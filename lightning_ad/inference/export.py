"""Export a fitted checkpoint as one ONNX or TorchScript file: preprocessing, backbone, bank, kNN scoring, maps, thresholds.

::

    lightning-ad export --ckpt_path fit.ckpt --format onnx --output spade.onnx [--input_size H W] [--overwrite]

The exported model takes the decoded photo as it is: ``uint8`` ``[B, H, W, 3]`` RGB
(channels last, any batch size ``B``, any size ``H x W``: decoding is the only step outside),
resizes and crops it inside exactly as :class:`~lightning_ad.inference.detector.Detector` does, and
returns, in this order:

* ``score`` ``[B]`` float32: raw image score (feature distance: the checkpoint's image score);
* ``normalized_score`` ``[B]`` float64: 0.5 at the image threshold (NaN when it is unknown);
* ``decision`` ``[B]`` bool: ``score >= image_threshold`` (all False when it is unknown);
* ``anomaly_map`` ``[B, H, W]`` float32: raw map at the photo's own size, NaN where the centre
  crop removed the pixel (the rule of :mod:`lightning_ad.inference.detector`);
* ``mask`` ``[B, H, W]`` bool: ``anomaly_map >= pixel_threshold`` (False where not inspected
  or when the threshold is unknown).

Inside, in order:

1. the input contract (:class:`~lightning_ad.inference.geometry.PhotoPreprocess`): resize to ``image_size``
   with torch's ``uint8`` bilinear antialiased kernel reproduced bit for bit (its integer
   weights computed from the photo's size at run time, horizontal pass then vertical, each
   rounded to ``uint8``), with the centre crop folded in; then ``/ 255`` in float32: the model
   sees the pixels that :class:`~lightning_ad.data.transforms.Preprocess` gives;
2. the fitted :class:`~lightning_ad.core.spade.SpadeModel`'s own forward, traced (:meth:`SpadeModel.for_export
   <lightning_ad.core.spade.SpadeModel.for_export>`: its backbone's TensorFlow-style "same" padding fixed for the
   crop, its bank in memory): features, kNN search, level maps and image score are the code that scores eagerly,
   which takes the batch-generic form of each step while it is traced (:func:`~lightning_ad.core.tracing.exporting`);
3. the map brought to the photo's size by :func:`~lightning_ad.inference.geometry.restore_map`; the normalised
   score and the decisions by :func:`~lightning_ad.core.thresholds.normalize_scores` and
   :func:`~lightning_ad.core.thresholds.decide`.

``--input_size H W`` fixes the accepted size (the ONNX input is declared ``[B, H, W, 3]``);
photos of another size must then be resized to it first, with the resampling the metadata
names (``input.resample``): torch's uint8 antialiased bilinear, which Pillow's
``Image.resize((W, H), Image.BILINEAR)`` reproduces. Without it any size is taken.

Metadata (JSON): thresholds, the input contract, the accepted input size (``null``: any),
backbone, levels, K values, search radius, lightning_ad version. ONNX: ``metadata_props`` key ``lightning_ad``;
TorchScript: the extra file ``lightning_ad.json`` (``torch.jit.load(path, _extra_files=...)``).

Wrong inputs: the TorchScript model checks dtype and shape first and raises
``ValueError`` (seen as ``torch.jit.Error`` / ``RuntimeError`` by the caller) with the
expected ``uint8 [B, H, W, 3]``. ONNX Runtime checks the declared input itself before
running: a wrong dtype gives ``INVALID_ARGUMENT : Unexpected input data type. Actual:
(tensor(float)) , expected: (tensor(uint8))`` and, for a fixed ``--input_size``, a wrong size
``INVALID_ARGUMENT : Got invalid dimensions for input: images for the following indices index:
1 Got: 100 Expected: 64`` (both ``onnxruntime.capi.onnxruntime_pybind11_state.InvalidArgument``).

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
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..core.spade import SpadeModel
from ..core.thresholds import decide, normalize_scores
from ..data.contract import ContractLike, InputContract
from ..data.transforms import as_hw
from ..errors import ConfigurationError
from ..files import atomic_path, plain_mode
from .checkpoint import fitted_contract, load_model, thresholds_in_use
from .detector import scoring_facts
from .geometry import PhotoPreprocess, restore_map

__all__ = [
    "FORMATS",
    "OUTPUT_NAMES",
    "ONNX_EXTERNAL_BYTES",
    "ExportableSpade",
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


# ---------------------------------------------------------------------- the model


class ExportableSpade(nn.Module):
    """A fitted :class:`SpadeModel` with the input contract and thresholds: decoded photos in, the five outputs out.

    ``forward(images uint8 [B, H, W, 3])`` returns the outputs of the module docstring, maps at the photos' own
    size. It only wraps the model: the photo's resize and crop (:class:`~lightning_ad.inference.geometry.PhotoPreprocess`)
    before, the map's restoration to the photo's size and the decisions after; the scoring in between is the
    model's own forward (:meth:`SpadeModel.for_export`: the eager code, traced). The photos' size is read at run
    time; ``input_size`` only records a fixed size that :class:`_Checked` (TorchScript) and the ONNX input
    declaration enforce.
    """

    def __init__(self, model: SpadeModel, contract: ContractLike, input_size: Optional[Tuple[int, int]],
                 image_threshold: float, pixel_threshold: float) -> None:
        super().__init__()
        model.require_fitted()
        model.image_scores(torch.zeros(1), torch.zeros(1))  # refuses a combined score whose scales were never learned
        self.contract = InputContract.of(contract)
        self.input_size = None if input_size is None else (int(input_size[0]), int(input_size[1]))
        self.preprocess = PhotoPreprocess(self.contract)
        self.model = model.for_export(self.contract.crop)
        self.image_threshold = float(image_threshold)
        self.pixel_threshold = float(pixel_threshold)

    def forward(self, images: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        shape = torch._shape_as_tensor(images)  # [B, H, W, 3], read at run time
        scored = self.model(self.preprocess(images))
        scores = scored.image_scores
        full = restore_map(scored.anomaly_maps, (shape[1], shape[2]), self.contract)  # NaN outside the crop
        normalized = normalize_scores(scores, self.image_threshold)
        return scores.float(), normalized, decide(scores, self.image_threshold), full, decide(full, self.pixel_threshold)


#: dtypes a wrong input is named by in the TorchScript error (those this torch has).
_DTYPE_NAMES = ("float32", "float64", "float16", "bfloat16", "int8", "int16", "int32", "int64", "uint16", "uint32",
                "uint64", "bool", "complex64", "complex128")


def _dtype_code(x: Tensor) -> int:
    return x.dtype  # TorchScript's number of the dtype (a dtype is an int inside TorchScript)


class _Checked(nn.Module):
    """TorchScript wrapper: refuses a wrong dtype or shape with a message, then runs the traced model."""

    def __init__(self, core: nn.Module, input_size: Optional[Tuple[int, int]]) -> None:
        super().__init__()
        self.core = core
        self.height = -1 if input_size is None else int(input_size[0])
        self.width = -1 if input_size is None else int(input_size[1])
        expected = "[B, H, W, 3]" if input_size is None else f"[B, {self.height}, {self.width}, 3]"
        self.message = f"lightning_ad export: images must be uint8 {expected} (decoded RGB photos, channels last)"
        if input_size is not None:
            self.message += "; this model was exported for that input size (lightning-ad export --input_size H W)"
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
            raise ValueError(self.message + ". Got dtype " + name + ".")
        if images.dim() != 4 or images.size(3) != 3 or (self.height >= 0 and (images.size(1) != self.height or images.size(2) != self.width)):
            raise ValueError(self.message + ". Got shape " + str(images.shape) + ".")
        return self.core(images)


# ---------------------------------------------------------------------- building and writing


#: How photos are brought to the contract's ``image_size`` (and to a fixed ``--input_size``): torch's uint8 kernel.
RESAMPLE = ("bilinear with antialiasing on uint8 RGB, as torchvision.transforms.v2.functional.resize(image, size, "
            "antialias=True) on a uint8 [3, H, W] tensor computes it, or Pillow's Image.resize((W, H), Image.BILINEAR)")


def export_metadata(model: SpadeModel, contract: ContractLike, input_size: Optional[Tuple[int, int]],
                    image_threshold: float, pixel_threshold: float, fmt: str) -> Dict[str, Any]:
    """The JSON facts stored in the exported file (``input.size`` None: photos of any size)."""
    return {
        **scoring_facts(model, image_threshold, pixel_threshold),
        "format": fmt,
        "input": {"name": INPUT_NAME, "dtype": "uint8", "layout": "[B, H, W, 3] RGB, decoded photos",
                  "size": None if input_size is None else list(input_size), "resample": RESAMPLE},
        "contract": InputContract.of(contract).as_dict(),
        "outputs": list(OUTPUT_NAMES),
    }


def build_exportable(ckpt_path: Union[str, Path], input_size: Optional[Sequence[int]] = None
                     ) -> Tuple[ExportableSpade, Dict[str, Any]]:
    """The :class:`ExportableSpade` of a checkpoint (CPU, eval) and its metadata (format left ``None``);
    ``input_size`` None: photos of any size."""
    size = as_hw(list(input_size), "input_size") if input_size is not None else None
    model, hp, meta = load_model(ckpt_path)
    contract = fitted_contract(meta)
    image_t, pixel_t = thresholds_in_use(model, hp, meta)
    module = ExportableSpade(model, contract, size, image_t, pixel_t).eval()
    return module, export_metadata(model, contract, size, image_t, pixel_t, fmt="")


def _check_output(output: Path, overwrite: bool) -> None:
    if output.exists() and not overwrite:
        raise ConfigurationError(f"export output {str(output)!r} already exists: pass overwrite=True (--overwrite) to replace it.")
    if output.exists() and output.is_dir():
        raise ConfigurationError(f"export output {str(output)!r} is a folder: name a file.")
    if not output.parent.is_dir():
        raise ConfigurationError(f"export output folder {str(output.parent)!r} does not exist.")


def _example(module: ExportableSpade) -> Tensor:
    """The tracing input: the fixed input size, or a size no photo shares with the contract (nothing
    about the size may be folded into the graph as a constant)."""
    height, width = module.input_size or (module.contract.image_size[0] + 37, module.contract.image_size[1] + 53)
    return torch.zeros(1, height, width, 3, dtype=torch.uint8)


def _write_torchscript(module: ExportableSpade, metadata: Dict[str, Any], output: Path) -> None:
    example = _example(module)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on constant shapes (the contract's sizes are fixed by design)
        traced = torch.jit.trace(module, (example,), check_trace=False)
        scripted = torch.jit.script(_Checked(traced, module.input_size))
    with atomic_path(output, ".pt") as temp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.save.* is deprecated", category=FutureWarning)
        torch.jit.save(scripted, str(temp), _extra_files={"lightning_ad.json": json.dumps(metadata)})


def _write_onnx(module: ExportableSpade, metadata: Dict[str, Any], output: Path) -> None:
    try:
        import onnx
    except ImportError:
        raise ConfigurationError("ONNX export needs the onnx package: pip install 'lightning-ad[export]' "
                                 "(onnx, onnxruntime).") from None
    example = _example(module)
    axes = {0: "batch"} if module.input_size is not None else {0: "batch", 1: "height", 2: "width"}
    size = sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))
    external = size > ONNX_EXTERNAL_BYTES
    with tempfile.TemporaryDirectory(prefix=".lightning_ad_export_", dir=output.parent) as work:
        raw = Path(work) / "model.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, (example,), str(raw), dynamo=False, opset_version=OPSET, input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES), do_constant_folding=True,
                dynamic_axes={INPUT_NAME: axes, **{name: {k: v for k, v in axes.items() if k < (3 if "map" in name or name == "mask" else 1)}
                                                   for name in OUTPUT_NAMES}},
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
            os.chmod(data, plain_mode(staged))  # onnx creates it 0600
            os.replace(data, output.parent / (output.name + ".data"))
        else:
            onnx.save_model(proto, str(staged))
        os.replace(staged, output)  # the staging folder is removed with whatever is left in it


def export_detector(ckpt_path: Union[str, Path], fmt: str, output: Union[str, Path],
                    input_size: Optional[Sequence[int]] = None, overwrite: bool = False) -> Dict[str, Any]:
    """Write the checkpoint's detector as one ``fmt`` file (``"onnx"`` or ``"torchscript"``) at ``output``.

    Args:
        ckpt_path: a checkpoint written by ``lightning-ad fit``.
        fmt: ``"onnx"`` or ``"torchscript"``.
        output: the file to write (its folder must exist).
        input_size: ``(H, W)``: accept only photos of that size; default: any size.
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
                        help="accept only photos of this height and width (default: any size; the graph resizes "
                             "them as the Detector does)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    return parser


def export_main(argv: Optional[Sequence[str]] = None) -> int:
    """``lightning-ad export ...``: errors are :mod:`lightning_ad.errors` exceptions (the CLI prints them)."""
    parser = add_export_arguments(argparse.ArgumentParser(
        prog="lightning-ad export", description="Export a fitted checkpoint as one ONNX or TorchScript file."))
    args = parser.parse_args(None if argv is None else list(argv))
    metadata = export_detector(args.ckpt_path, args.format, args.output, args.input_size, args.overwrite)
    size = metadata["input"]["size"]
    shape = "[B, H, W, 3] (decoded photos of any size)" if size is None else f"[B, {size[0]}, {size[1]}, 3]"
    print(f"wrote {args.output} ({args.format}): uint8 {shape} -> {', '.join(OUTPUT_NAMES)}; "
          f"thresholds {metadata['thresholds']}")
    return 0
