"""The command line documents every option: data options forwarded by ``**kwargs`` and the model's.

The expected options and their help come from the classes' docstrings ("Args:"), so a
parameter that the parser loses, or documents without its text, fails here.
"""

from __future__ import annotations

import inspect
import re
import sys
from typing import Dict, List

import pytest

from lightning_ad import DemoDataModule, FolderDataModule, MVTecDataModule, Spade
from lightning_ad.command import main
from lightning_ad.data import AnomalyDataModule


def documented_args(cls) -> Dict[str, str]:
    """``{name: description}`` of the "Args:" section of ``cls``'s docstring (``**kwargs`` left out),
    descriptions with whitespace collapsed."""
    doc = inspect.cleandoc(cls.__doc__)
    section = doc.split("Args:", 1)[1]
    args: Dict[str, str] = {}
    name = None
    for line in section.splitlines():
        if not line.strip():
            if args:
                break
            continue
        match = re.match(r"^    (\*{0,2}\w+): (.*)$", line)
        if match:
            name = match.group(1)
            args[name] = match.group(2)
        elif line.startswith("        ") and name is not None:
            args[name] += " " + line.strip()
        else:
            break
    args.pop("**kwargs", None)
    return {k: " ".join(v.split()) for k, v in args.items()}


def option_help(output: str, prefix: str) -> Dict[str, str]:
    """``{option name: help text}`` of the options ``--<prefix>.<name>`` in argparse help ``output``
    (the option lines, not the usage), whitespace collapsed."""
    entries: Dict[str, List[str]] = {}
    current = None
    for line in output.splitlines():
        match = re.match(rf"^  --{re.escape(prefix)}\.(\w+)\b(.*)$", line)
        if match:
            current = match.group(1)
            entries[current] = [match.group(2)]
        elif current is not None and line.startswith("    "):
            entries[current].append(line)
        else:
            current = None
    return {name: " ".join(" ".join(parts).split()) for name, parts in entries.items()}


def run_help(args: List[str], capsys, monkeypatch) -> str:
    """stdout of ``lightning-ad <args>``, which must exit with status 0."""
    monkeypatch.setattr(sys, "argv", ["lightning-ad"])
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


def fragment(description: str) -> str:
    """The first words of a description (argparse may wrap the rest anywhere)."""
    return " ".join(description.split()[:6])


@pytest.mark.parametrize("cls", [FolderDataModule, MVTecDataModule, DemoDataModule])
def test_data_help_lists_every_option_with_its_documentation(cls, capsys, monkeypatch):
    output = run_help(["fit", "--data.help", f"lightning_ad.{cls.__name__}"], capsys, monkeypatch)
    listed = option_help(output, "data")
    base = documented_args(AnomalyDataModule)
    own = documented_args(cls)
    expected = {**base, **own}
    assert set(base) == {"image_size", "crop_size", "batch_size", "num_workers", "predict_dir", "val_split", "skip_broken"}
    assert set(listed) == set(expected), (sorted(listed), sorted(expected))
    for name, description in expected.items():
        assert fragment(description) in listed[name], (name, description, listed[name])
    assert set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"} == set(own)


def test_demo_data_options_do_not_offer_the_fixed_category(capsys, monkeypatch):
    output = run_help(["fit", "--data.help", "lightning_ad.DemoDataModule"], capsys, monkeypatch)
    assert "--data.root" in output and "--data.category" not in output


def test_fit_help_lists_every_model_option_with_its_documentation(capsys, monkeypatch):
    output = run_help(["fit", "--help"], capsys, monkeypatch)
    listed = option_help(output, "model")
    expected = documented_args(Spade)
    assert {"image_k", "gallery_k", "kappa", "sigma", "backbone"} <= set(expected)
    assert set(listed) == set(expected), (sorted(listed), sorted(expected))
    for name, description in expected.items():
        assert fragment(description) in listed[name], (name, description, listed[name])


def test_forwarded_options_reach_the_base_class():
    dm = FolderDataModule(normal_dir="n", image_size=[64, 48], crop_size=None, batch_size=3, num_workers=0,
                          predict_dir="p", val_split=0.25, skip_broken=True)
    assert (dm.preprocess.image_size, dm.preprocess.crop_size) == ((64, 48), (64, 48))
    assert (dm.batch_size, dm.num_workers, dm.predict_dir, dm.val_split, dm.skip_broken) == (3, 0, "p", 0.25, True)
    demo = DemoDataModule(root="r", seed=3, image_size=64, crop_size=32, batch_size=5)
    assert (demo.root.name, demo.category, demo.seed, demo.batch_size, demo.preprocess.output_size) == (
        "r", "demo_parts", 3, 5, (32, 32))
    with pytest.raises(TypeError, match="unexpected keyword argument 'batchsize'"):
        MVTecDataModule(batchsize=4)
