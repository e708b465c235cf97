r"""Patch files: a `PatchSet` on disk, and the fingerprint that ties it to the model it was absorbed on.

A patch file is one safetensors file (format `FORMAT`, version `VERSION`); nothing in it is ever unpickled.

- Tensors, each under a key ``<layer>/<part>/<name>/<field>``: ``n/rank1/<param>/U`` and ``.../V`` (the
  factors of $P + U_j V_j^\top$ in the parameter's storage layout), ``n/values/<param>/value`` (the patched
  value per token), ``n/factored/<canonical>/<field>`` and ``n/token<j>/<canonical>/<field>`` (the kernel's
  factored patches, which `PatchSet.logits` applies), and ``positions`` (the paper's reduced run).
- The header, JSON under the safetensors metadata key ``"ctxpatch"``: ``format``, ``version``, ``model``
  (``type``, ``dtype``, ``layers`` and the `fingerprint`), ``protocol`` (``positions``, ``incremental``,
  ``input_strategy``, ``patch_dtype`` and, per block spec, the output strategies whose kernels apply the
  patches), ``tokens`` (``query_ids``, ``context_ids``), ``layers`` (per layer: the strategies and
  amplification per token and the names of its tensors), ``errors`` (what was measured when it was made),
  ``meta`` (free text: the context and query, the model's source) and ``versions``.

The model fingerprint has four parts, each a SHA-256: ``config`` (the model's config without what varies
between copies of the same weights: paths, versions, the dtype, the attention implementation), ``shapes``
(every parameter's name, shape and dtype), ``patched`` (every byte of the parameters the patches replace)
and ``sampled`` (257 evenly spaced entries of every parameter). `PatchSet.load` compares all four before it reads
a tensor into a `PatchSet`, and names the parts that differ (`FingerprintMismatch`).
"""

from __future__ import annotations

import hashlib
import json
import math
from importlib import metadata
from pathlib import Path

import torch

from numeric.hf.layout import parameter_view
from numeric.hf.offload import get
from numeric.hf.patches import LayerPatches
from symbolic.errors import CtxpatchInputError, ModelInputError

FORMAT = "ctxpatch-patchset"
VERSION = 1
META_KEY = "ctxpatch"
SAMPLES = 257  # entries of each parameter hashed into the ``sampled`` part of the fingerprint
#: config keys that differ between copies of the same weights (where they were read from, in which dtype)
VOLATILE = frozenset({"_name_or_path", "transformers_version", "torch_dtype", "dtype", "quantization_config",
                      "_attn_implementation", "_attn_implementation_autoset", "_commit_hash", "architectures",
                      "use_cache", "output_attentions", "output_hidden_states", "return_dict"})
PARTS = {"config": "configuration", "shapes": "parameter names, shapes or dtypes",
         "patched": "values of the patched parameters", "sampled": "sampled values of the other parameters"}


class PatchFileError(CtxpatchInputError):
    """A file is not a readable patch file: truncated, not safetensors, a safetensors file without a ctxpatch
    header (a model's weights), a header of another format or version, or tensors that do not fit it."""


class FingerprintMismatch(ModelInputError):
    """A patch file applied to a model other than the one it was absorbed on (or to a changed copy of it)."""


# --------------------------------------------------------------------------- fingerprint


def _sha(chunks) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c if isinstance(c, bytes) else str(c).encode())
    return h.hexdigest()


def _bytes(t: torch.Tensor) -> bytes:
    """The tensor's bytes in its own dtype (bfloat16 included), row-major."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def patched_names(layers: list[LayerPatches]) -> list[list[str]]:
    """Per layer, the parameters (or stacked-expert slices) a patch set replaces."""
    return [sorted({*lp.rank1, *lp.values}) for lp in layers]


def fingerprint(model, layers: str | None, patched: list[list[str]]) -> dict[str, str]:
    """The four SHA-256 parts that identify the model a patch set belongs to (module docstring); ``layers``: the
    path of the decoder layers, ``patched``: per layer, the parameters the patches replace."""
    config = {k: v for k, v in model.config.to_dict().items() if k not in VOLATILE}
    params = sorted(model.named_parameters(), key=lambda kv: kv[0])

    def sampled():
        for _, p in params:
            flat = p.detach().reshape(-1)
            k = min(SAMPLES, flat.numel())
            idx = torch.arange(k, dtype=torch.long) * (flat.numel() - 1) // max(k - 1, 1)  # exact in int64
            yield _bytes(flat[idx])

    def replaced():
        decoder = get(model, layers) if patched else None
        for n, names in enumerate(patched):
            for name in names:
                yield f"{n}/{name}"
                yield _bytes(parameter_view(decoder[n], name))

    return {"config": _sha([json.dumps(config, sort_keys=True, default=str)]),
            "shapes": _sha(f"{k}:{tuple(p.shape)}:{p.dtype};" for k, p in params),
            "patched": _sha(replaced()), "sampled": _sha(sampled())}


def check_model(header: dict, model, layers: str | None, count: int | None, path) -> None:
    """Refuse (`FingerprintMismatch`) a model whose fingerprint differs from the file's, naming the parts;
    ``layers``/``count``: the path and number of the model's decoder layers (None: not found)."""
    want = header["model"]
    got_type = getattr(model.config, "model_type", "?")
    names = [entry["names"] for entry in header["layers"]]
    mine = fingerprint(model, None, []) | {"patched": None}
    if layers is not None and len(names) == count:
        try:
            mine = fingerprint(model, layers, names)
        except (AttributeError, IndexError, KeyError, ValueError):  # a patched parameter this model lacks
            pass
    differ = [k for k in PARTS if mine[k] != want["fingerprint"].get(k)]
    if not differ:
        return
    made = want.get("source") or "another model"
    dtype = str(_dtype(model)).removeprefix("torch.")
    raise FingerprintMismatch(
        f"{path}: the patch file was absorbed on {made} ({want['type']}, {want['layers']} layers, {want['dtype']}); "
        f"this model ({got_type}, {'?' if count is None else count} layers, {dtype}) has another "
        f"fingerprint: its {', '.join(PARTS[k] for k in differ)} differ. A patch is exact only for the weights it "
        "was computed on: apply it to that model (same weights, same dtype), or absorb the context again on this "
        "one.")


def _dtype(model) -> torch.dtype:
    return next(model.parameters()).dtype


# --------------------------------------------------------------------------- save


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("ctxpatch", "torch", "transformers", "safetensors"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _finite(x):
    """JSON has no NaN: a NaN figure is written as null."""
    return None if isinstance(x, float) and math.isnan(x) else x


def _layer_tensors(n: int, lp: LayerPatches) -> tuple[dict, dict[str, torch.Tensor]]:
    """A layer's header entry and its tensors under their keys (each a contiguous copy: safetensors refuses
    tensors sharing storage, such as the slices of stacked experts)."""
    tensors: dict[str, torch.Tensor] = {}

    def put(key, t):
        tensors[f"{n}/{key}"] = t.detach().cpu().contiguous().clone()

    for name, (u, v) in lp.rank1.items():
        put(f"rank1/{name}/U", u)
        put(f"rank1/{name}/V", v)
    for name, value in lp.values.items():
        put(f"values/{name}/value", value)
    groups = {"factored": lp.factored, **{f"token{j}": t for j, t in enumerate(lp.per_token)}}
    for group, patches in groups.items():
        for canon, fields in patches.items():
            for f, t in fields.items():
                put(f"{group}/{canon}/{f}", t)
    entry = {"names": sorted({*lp.rank1, *lp.values}), "rank1": list(lp.rank1), "values": list(lp.values),
             "factored": {c: list(f) for c, f in lp.factored.items()},
             "per_token": [{c: list(f) for c, f in t.items()} for t in lp.per_token],
             "strategies": list(lp.strategies), "amplification": [_finite(float(a)) for a in lp.amplification]}
    return entry, tensors


def save(ps, path, *, context_ids: torch.Tensor | None = None, errors: dict | None = None,
         meta: dict | None = None, source: str | None = None) -> Path:
    """Write the patch set `ps` to `path` (a safetensors file, module docstring) and return the path.

    ``context_ids`` (1, c): the context the patches absorbed, which `ctxpatch apply` runs again to measure the
    replay; ``errors``: the figures measured when it was made (default: ``ps.accuracy`` where the patch set
    measured itself); ``meta``: free JSON (the context and query text); ``source``: where the model came from.
    """
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    entries = []
    for n, lp in enumerate(ps.layers):
        entry, ts = _layer_tensors(n, lp)
        entries.append(entry)
        tensors |= ts
    if ps.positions is not None:
        tensors["positions"] = ps.positions.detach().cpu().contiguous().clone()
    if errors is None and getattr(ps, "accuracy", None) is not None:
        errors = ps.accuracy.as_dict()
    patch_dtype = getattr(ps, "patch_dtype", None)
    first = {s.name: next(iter(k.values())) for s, k in ps.kernels.items()}
    header = {
        "format": FORMAT, "version": VERSION,
        "model": {"type": getattr(ps.model.config, "model_type", None), "source": source,
                  "dtype": str(_dtype(ps.model)).removeprefix("torch."), "layers": len(ps.layers),
                  "fingerprint": fingerprint(ps.model, ps.layout.layers, patched_names(ps.layers))},
        "protocol": {"positions": ps.positions is not None, "incremental": bool(ps.incremental),
                     "input_strategy": next((getattr(k, "INPUT_STRATEGY", None) for k in first.values()), None),
                     "patch_dtype": None if patch_dtype is None else str(patch_dtype).removeprefix("torch."),
                     "strategies": {s.name: list(k) for s, k in ps.kernels.items()}},
        "tokens": {"query_ids": ps.query_ids[0].tolist(),
                   "context_ids": None if context_ids is None else context_ids[0].tolist()},
        "layers": entries, "errors": {k: _finite(v) for k, v in (errors or {}).items()}, "meta": meta or {},
        "versions": _versions()}
    path = Path(path)
    save_file(tensors, str(path), metadata={META_KEY: json.dumps(header)})
    return path


# --------------------------------------------------------------------------- load


def read(path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The header and tensors of a patch file; `PatchFileError` naming what is wrong with any other file."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise PatchFileError(f"{path}: no such file. A patch file is written by `ctxpatch absorb` (or "
                             "PatchSet.save).")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
            if raw is None:
                raise PatchFileError(f"{path}: a safetensors file without a ctxpatch header (model weights?). A "
                                     "patch file is written by `ctxpatch absorb` (or PatchSet.save).")
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iterator)
    except SafetensorError as exc:
        raise PatchFileError(f"{path}: not a readable safetensors file ({exc}); it may be truncated or another "
                             "kind of file. A patch file is written by `ctxpatch absorb` (or PatchSet.save).") from None
    try:
        header = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise PatchFileError(f"{path}: the ctxpatch header is not JSON ({exc}).") from None
    _check_header(header, path)
    return header, tensors


def _check_header(header, path) -> None:
    """The header's format, version and the fields `load` reads, with their types."""
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        got = header.get("format") if isinstance(header, dict) else type(header).__name__
        raise PatchFileError(f"{path}: the header's format is {got!r}, not {FORMAT!r}.")
    if header.get("version") != VERSION:
        raise PatchFileError(f"{path}: patch file format version {header.get('version')!r}; this ctxpatch reads "
                             f"version {VERSION}.")
    shape = {"model": dict, "protocol": dict, "tokens": dict, "layers": list, "errors": dict}
    for key, kind in shape.items():
        if not isinstance(header.get(key), kind):
            raise PatchFileError(f"{path}: the header's field {key!r} is missing or not a {kind.__name__}.")
    fields = {("model", "fingerprint"): dict, ("model", "layers"): int, ("model", "type"): str,
              ("model", "dtype"): str, ("protocol", "strategies"): dict, ("protocol", "positions"): bool,
              ("protocol", "incremental"): bool, ("tokens", "query_ids"): list}
    for (outer, inner), kind in fields.items():
        if not isinstance(header[outer].get(inner), kind):
            raise PatchFileError(f"{path}: the header's field {outer}.{inner} is missing or not a {kind.__name__}.")
    q = len(header["tokens"]["query_ids"])
    if q == 0 or not all(isinstance(i, int) and i >= 0 for i in header["tokens"]["query_ids"]):
        raise PatchFileError(f"{path}: tokens.query_ids must be a non-empty list of token ids.")
    ctx = header["tokens"].get("context_ids")
    if ctx is not None and not (isinstance(ctx, list) and all(isinstance(i, int) and i >= 0 for i in ctx)):
        raise PatchFileError(f"{path}: tokens.context_ids must be null or a list of token ids.")
    if len(header["layers"]) != header["model"]["layers"]:
        raise PatchFileError(f"{path}: {len(header['layers'])} layer entries for a {header['model']['layers']}-layer "
                             "model.")
    for n, entry in enumerate(header["layers"]):
        want = {"names": list, "rank1": list, "values": list, "factored": dict, "per_token": list,
                "strategies": list, "amplification": list}
        bad = [k for k, kind in want.items() if not isinstance(entry, dict) or not isinstance(entry.get(k), kind)]
        if bad:
            raise PatchFileError(f"{path}: layer {n}'s header entry lacks {', '.join(bad)}.")
        if len(entry["strategies"]) not in (0, q) or entry["per_token"] and len(entry["per_token"]) != q:
            raise PatchFileError(f"{path}: layer {n} has {len(entry['strategies'])} strategies for {q} query tokens.")


def _tensor(tensors, key, path, shape=None, rows=None, dtype=None) -> torch.Tensor:
    """The tensor under `key`, with the shape (or the number of rows) and dtype the header implies."""
    t = tensors.get(key)
    if t is None:
        raise PatchFileError(f"{path}: the tensor {key!r} named in the header is missing.")
    wrong_rows = rows is not None and (t.dim() == 0 or t.shape[0] != rows)
    if shape is not None and tuple(t.shape) != tuple(shape) or wrong_rows:
        want = shape if shape is not None else f"({rows}, ...)"
        raise PatchFileError(f"{path}: the tensor {key!r} has shape {tuple(t.shape)}, not {want}.")
    if dtype is not None and t.dtype != dtype:
        raise PatchFileError(f"{path}: the tensor {key!r} is {t.dtype}, not the model's {dtype}.")
    if not (t.is_floating_point() or key == "positions"):
        raise PatchFileError(f"{path}: the tensor {key!r} is {t.dtype}, not floating point.")
    return t


def _layer(n, entry, tensors, decoder, q, path) -> LayerPatches:
    lp = LayerPatches(strategies=list(entry["strategies"]),
                      amplification=[float("nan") if a is None else float(a) for a in entry["amplification"]])
    for name in entry["rank1"]:
        p = parameter_view(decoder[n], name)
        if p.dim() != 2:
            raise PatchFileError(f"{path}: layer {n}'s rank-1 patch of {name} names a parameter of shape "
                                 f"{tuple(p.shape)}, not a matrix.")
        lp.rank1[name] = (_tensor(tensors, f"{n}/rank1/{name}/U", path, (q, p.shape[0])),
                          _tensor(tensors, f"{n}/rank1/{name}/V", path, (q, p.shape[1])))
    for name in entry["values"]:
        p = parameter_view(decoder[n], name)
        lp.values[name] = _tensor(tensors, f"{n}/values/{name}/value", path, (q, *p.shape))
    lp.factored = {c: {f: _tensor(tensors, f"{n}/factored/{c}/{f}", path, rows=q) for f in fields}
                   for c, fields in entry["factored"].items()}
    lp.per_token = [{c: {f: _tensor(tensors, f"{n}/token{j}/{c}/{f}", path, rows=1) for f in fields}
                     for c, fields in token.items()} for j, token in enumerate(entry["per_token"])]
    if not lp.factored and not lp.per_token:
        raise PatchFileError(f"{path}: layer {n} has neither factored nor per-token kernel patches.")
    return lp


def fields(header: dict, tensors: dict[str, torch.Tensor], model, path, *, spec=None,
           params: dict[str, str] | None = None) -> dict:
    """The `PatchSet` fields (keywords) of a file's `read` header and tensors on `model`, after checking the
    model's fingerprint against the file's (`FingerprintMismatch`); `PatchFileError` where the tensors do not
    fit the header. `PatchSet.load` builds the patch set from them."""
    from numeric import kernels
    from numeric.hf.infer import layout_for

    try:
        layout = layout_for(model, spec, params)
    except CtxpatchInputError:  # no layout for this model: refused by its fingerprint if that differs
        check_model(header, model, None, None, path)
        raise
    check_model(header, model, layout.layers, len(layout), path)
    protocol, q = header["protocol"], len(header["tokens"]["query_ids"])
    ids = header["tokens"]["query_ids"] + (header["tokens"].get("context_ids") or [])
    vocab = model.get_input_embeddings().num_embeddings
    if max(ids) >= vocab:
        raise PatchFileError(f"{path}: token id {max(ids)} is outside the model's vocabulary of {vocab}.")
    names = {s.name: s for s in layout.specs}
    missing = sorted(set(protocol["strategies"]) - set(names))
    if missing or not all(isinstance(v, list) and v for v in protocol["strategies"].values()):
        raise PatchFileError(f"{path}: the header names block specs {missing or list(protocol['strategies'])} "
                             f"with their strategies; the model's are {sorted(names)}.")
    found = {names[s]: {k: kernels.load(names[s], "torch", k, protocol.get("input_strategy")) for k in ks}
             for s, ks in protocol["strategies"].items()}
    decoder = get(model, layout.layers)
    try:
        layers = [_layer(n, e, tensors, decoder, q, path) for n, e in enumerate(header["layers"])]
    except (AttributeError, IndexError, ValueError) as exc:
        if isinstance(exc, CtxpatchInputError):
            raise
        raise PatchFileError(f"{path}: the header names a parameter the model does not have ({exc}).") from None
    for n, lp in enumerate(layers):
        unknown = set(lp.strategies) - set(found.get(layout[n].spec, {}))
        if unknown:
            raise PatchFileError(f"{path}: layer {n} uses strategies {sorted(unknown)} that the header's kernels "
                                 "do not include.")
    positions = _tensor(tensors, "positions", path, (1, q)) if protocol["positions"] else None
    query = torch.tensor([header["tokens"]["query_ids"]], dtype=torch.long)
    out = {"model": model, "query_ids": query, "layers": layers, "layout": layout, "positions": positions,
           "kernels": found, "incremental": protocol["incremental"]}
    if protocol.get("patch_dtype"):
        out["patch_dtype"] = getattr(torch, protocol["patch_dtype"])
    return out


# --------------------------------------------------------------------------- sequence patches (PEFT folders)

SEQUENCE_FORMAT = "ctxpatch-sequence"
SIDECAR = "ctxpatch.json"


def save_sequence(sp, folder, *, context_ids: torch.Tensor, meta: dict | None = None,
                  source: str | None = None) -> Path:
    """Write a `SequencePatch` as a PEFT LoRA adapter folder (`SequencePatch.save_peft`) with ``ctxpatch.json``
    beside it: the format, the model's fingerprint (over the maps and norms the patch replaces), the tokens;
    `record_errors` adds the figures once the adapter is measured as PEFT loads it."""
    folder = Path(folder)
    sp.save_peft(folder)
    names = [sorted([f"{p}.weight" for p in lp.lora] + list(lp.scale)) for lp in sp.layers]
    header = {"format": SEQUENCE_FORMAT, "version": VERSION,
              "model": {"type": getattr(sp.model.config, "model_type", None), "source": source,
                        "dtype": str(_dtype(sp.model)).removeprefix("torch."), "layers": len(sp.layers),
                        "layers_path": sp.adapter.layers,
                        "fingerprint": fingerprint(sp.model, sp.adapter.layers, names)},
              "tokens": {"query_ids": sp.query_ids[0].tolist(), "context_ids": context_ids[0].tolist()},
              "layers": [{"names": n, "rank": lp.rank} for n, lp in zip(names, sp.layers, strict=True)],
              "errors": {}, "meta": meta or {}, "versions": _versions()}
    (folder / SIDECAR).write_text(json.dumps(header, indent=1), encoding="utf-8")
    return folder


def record_errors(folder, errors: dict) -> None:
    """Add the measured figures to a sequence adapter's ``ctxpatch.json``."""
    path = Path(folder) / SIDECAR
    header = json.loads(path.read_text(encoding="utf-8"))
    header["errors"] = {k: _finite(v) for k, v in errors.items()}
    path.write_text(json.dumps(header, indent=1), encoding="utf-8")


def read_sequence(folder) -> dict:
    """The ``ctxpatch.json`` header of a sequence adapter folder; `PatchFileError` naming what is wrong."""
    path = Path(folder) / SIDECAR
    if not path.is_file():
        raise PatchFileError(f"{folder}: a folder without {SIDECAR}; `ctxpatch apply` replays a patch file or an "
                             "adapter folder written by `ctxpatch absorb --mode sequence`.")
    try:
        header = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PatchFileError(f"{path}: not JSON ({exc}).") from None
    if not isinstance(header, dict) or header.get("format") != SEQUENCE_FORMAT or header.get("version") != VERSION:
        raise PatchFileError(f"{path}: not a ctxpatch sequence header (format {SEQUENCE_FORMAT!r}, version "
                             f"{VERSION}).")
    try:
        ok = (isinstance(header["model"]["fingerprint"], dict) and isinstance(header["model"]["layers_path"], str)
              and all(isinstance(e["names"], list) for e in header["layers"])
              and all(isinstance(i, int) and i >= 0 for k in ("query_ids", "context_ids")
                      for i in header["tokens"][k]) and header["tokens"]["query_ids"]
              and isinstance(header["errors"], dict))
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise PatchFileError(f"{path}: the header lacks model.fingerprint, model.layers_path, layers[].names, "
                             "tokens or errors, or they have the wrong type.")
    return header


def check_sequence_model(header: dict, model, folder) -> None:
    """`check_model` for a sequence adapter folder: the decoder layers at the recorded path."""
    try:
        count = len(get(model, header["model"]["layers_path"]))
    except (AttributeError, IndexError, TypeError):
        count = None
    check_model(header, model, header["model"]["layers_path"] if count is not None else None, count, folder)
