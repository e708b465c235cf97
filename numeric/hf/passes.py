r"""Hook plumbing of the passes: where a layer's MLP input is read, its branch swapped, its weights written.

`contextual_bases` records $u_C$ (and the contextual products) of every layer in the run with the context;
`swapped_branches` replaces every MLP branch by the kernel's patched sub-block (factored patches);
`token_pass` runs the model's own modules with dense per-layer patches written in; `layer_outputs` records
what every layer hands to the next (the residual stream), which the patched runs compare with the contextual
run's (`numeric.hf.accuracy`). Every hook and every swapped ``forward`` is removed on exit, also when a pass
fails.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from numeric.hf import offload
from numeric.hf.compat import last_logits_only
from numeric.hf.dense import DenseWriter
from numeric.hf.layout import Adapter, Layout, layer_params, token_rows
from numeric.hf.offload import get


def trunk(model, head: bool):
    """The model, or without its head (a causal LM's decoder, ``base_model``) for a pass whose logits
    nobody reads: the head of a large vocabulary costs as much as many layers. A dispatched model
    always runs whole (accelerate's hooks on the top module place the inputs)."""
    base = getattr(model, "base_model", model)
    if head or base is model or not isinstance(base, torch.nn.Module) or offload.dispatched(model):
        return model
    return base


def token_pass(model, layout: Layout, ids: torch.Tensor, dense_for, writer: DenseWriter | None = None,
               head: bool = True, **kwargs):
    """One forward pass of the model's own modules with per-layer dense patches written in.

    At every layer, as soon as the MLP's input u is known (the pre-hook of the u module; of the
    branch module for a parallel block, once attention has run), ``dense_for(n, u, x)`` gives
    ``(LayerPatches, j)`` (or None: the layer keeps its weights), whose token j is written into the
    layer (`DenseWriter`) and restored after the branch module. All parameters are restored on exit,
    also when a patch fails. ``head=False``: the decoder alone (no logits; `trunk`).
    """
    state: dict = {}
    handles = _input_hooks(model, layout, state)
    layers = get(model, layout.layers)
    writer = writer or DenseWriter(model, layout)
    saved: dict[int, list] = {}

    def write(n):
        def hook(_mod, _args):
            u, x = _base(state.pop(n), layout[n])
            which = dense_for(n, u, x)
            if which is not None:
                saved[n] = writer.write(n, *which)
        return hook

    def restore(n):
        def hook(_mod, _args, _out):
            writer.restore(saved.pop(n, []))
        return hook

    for n, adapter in layout.patched():
        layer = layers[n]
        point = adapter.branch_module if adapter.mode == "parallel" else adapter.u_module
        handles.append(get(layer, point).register_forward_pre_hook(write(n)))
        handles.append(get(layer, adapter.last_module).register_forward_hook(restore(n)))
    try:
        with offload.located(model, layout.layers):
            return trunk(model, head)(ids, **kwargs)
    finally:
        for h in handles:
            h.remove()
        for n in list(saved):
            writer.restore(saved.pop(n))


def _input_hooks(model, layout: Layout, store: dict) -> list:
    """Hooks that store, per layer n, the input of the u module (`store[n]["first"]`) and, for a
    parallel block, the attention output (`store[n]["attn"]`); they do not change the run."""
    handles, layers = [], get(model, layout.layers)
    for n, adapter in layout.patched():
        layer = layers[n]

        def grab(_mod, args, n=n):  # (1, T, d), or (T, d) rows where the layer reshapes them (OPT)
            r = store.setdefault(n, {})
            r["first"], r["shape"] = token_rows(args[0]).detach(), args[0].shape

        def grab_attn(_mod, _args, output, n=n):
            store.setdefault(n, {})["attn"] = token_rows(output[0] if isinstance(output, tuple) else output).detach()

        handles.append(get(layer, adapter.u_module).register_forward_pre_hook(grab))
        if adapter.mode == "parallel":
            handles.append(get(layer, adapter.attn_module).register_forward_hook(grab_attn))
    return handles


def _product_hooks(model, layout: Layout, store: dict, start: int) -> list:
    """Hooks that store, per layer n, the output rows from ``start`` on of every module that computes a
    contextual product of the layer's kernel (`Adapter.products`): ``store[n][matrix]`` (T, out)."""
    handles, layers = [], get(model, layout.layers)
    for n, adapter in layout.patched():
        layer = layers[n]
        for canon, path in adapter.products:
            def grab(_mod, _args, out, n=n, canon=canon):  # a copy: a view would hold every position's output
                store.setdefault(n, {})[canon] = token_rows(out)[start:].detach().clone()

            handles.append(get(layer, path).register_forward_hook(grab))
    return handles


def given_rows(given: dict | None, rows) -> dict | None:
    """The given products of some tokens: ``rows`` an index or a slice of the token axis."""
    return None if not given else {k: v[rows] for k, v in given.items()}


def token_given(given: dict, j: int) -> dict:
    """{layer: token j's given products}, from every layer's (`contextual_bases`)."""
    return {n: given_rows(g, slice(j, j + 1)) for n, g in given.items()}


def _base(r: dict, adapter: Adapter) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(u, x) of one layer from what the hooks stored: x + attention and x for a parallel block."""
    if adapter.mode == "parallel":
        return r["first"] + r["attn"], r["first"]
    return r["first"], None


@contextmanager
def swapped_branches(model, layout: Layout, kernel_for, patches_for, sub_block=None):
    """Swap every layer's MLP branch for the kernel's patched sub-block (factored patches).

    The branch module's forward is replaced (so the model's own MLP never runs), modules in
    `adapter.skip` become pass-throughs, and the input hooks read u (and x, the attention output, for a
    parallel block). ``patches_for(n, u, x, plain)`` gives layer n's patches; ``plain``: the no-context
    products of u that ``kernel_for(n).plain(params, u)`` computed (None where the kernel has no such
    method, or none to give), which ``kernel_for(n).apply`` then takes too: each of those matrices read once.
    Each layer's parameters are read when its branch runs (loaded just in time by accelerate's hooks on a
    dispatched model). Every ``forward`` attribute is restored on exit to exactly what it was (accelerate's
    own wrapper on a dispatched model). ``sub_block(n, params, u, x)`` -> y: the sub-block's output computed
    whole instead (both rows of a batched generation step, `numeric.hf.paired`).
    """
    state: dict = {}
    handles, swapped, layers = _input_hooks(model, layout, state), [], get(model, layout.layers)
    for n, adapter in layout.patched():
        layer = layers[n]

        def branch(*args, n=n, layer=layer, adapter=adapter, **kwargs):
            r = state.pop(n)
            u, x = _base(r, adapter)
            params = layer_params(layer, adapter)
            extra = {} if x is None else {"x": x}
            if sub_block is not None:
                y = sub_block(n, params, u, x)
            else:
                kernel = kernel_for(n)
                plain = kernel.plain(params, u, **extra) if hasattr(kernel, "plain") else None
                which = patches_for(n, u, x, plain)
                y = kernel.apply(params, which, u, **extra) if plain is None else \
                    kernel.apply(params, which, u, plain=plain, **extra)
            out = module_output(adapter, y, u)
            # shaped as the module's input, (1, T, .) or OPT's (T, .) rows
            lead = args[0].shape[:-1] if args and isinstance(args[0], torch.Tensor) else r["shape"][:-1]
            out = out.reshape(*lead, out.shape[-1]).to(r["first"].dtype)
            return out if not adapter.arity else (out,) + (None,) * (adapter.arity - 1)  # the layer reads [0]

        for path, forward in [(p, _passthrough) for p in adapter.skip] + [(p, _zeros) for p in adapter.parts] + \
                [(adapter.branch_module, branch)]:
            module = get(layer, path)
            swapped.append((module, module.__dict__.get("forward", _CLASS_FORWARD)))
            module.forward = forward
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for module, forward in reversed(swapped):
            if forward is _CLASS_FORWARD:
                del module.forward  # back to the class's forward
            else:
                module.forward = forward  # the instance's own (accelerate's hook wrapper)


def module_output(adapter: Adapter, y: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    r"""The branch module's own output for the sub-block's output y at input u: y itself where the module returns
    the sum (`Adapter.returns_sum`), else $(y - u) / c$ (the layer multiplies the module's output by its branch
    multiplier c after the module)."""
    return y if adapter.returns_sum else (y - u) / adapter.spec.mlp.branch_scale


@contextmanager
def paired_branches(model, layout: Layout, patched_row):
    r"""Forwards of a batch of two rows, one token each: row 0 the run with the context, row 1 the run without it.

    The model's own modules run on both rows, so row 0 is the model's own run; the hooks read every patched
    layer's u of both rows (row 0's is row 1's target $u_C$; x too for a parallel block) and the contextual
    products its modules compute on row 0 (`Adapter.products`) and their twins on row 1 (the same matrices times
    the run's own vectors: ``twins``, {matrix: (1, out)}), and replace row 1 of the branch module's output
    by ``patched_row(n, u_C, u, x_C, x, given, twins)`` -> the patched sub-block's output y, (1, d) (`module_output`;
    the branch's summed `parts` give zeros on row 1: the branch module's row holds the whole branch). Row 1
    thus enters the next layer patched, within the same forward. The hooks are removed on exit."""
    state: dict = {}
    given: dict = {}
    handles = _input_hooks(model, layout, state) + _product_hooks(model, layout, given, 0)
    layers = get(model, layout.layers)
    for n, adapter in layout.patched():
        def replace(_mod, _args, output, n=n, adapter=adapter):
            r = state.pop(n)
            u, x = _base(r, adapter)
            both = given.pop(n, {})
            products, twins = {k: v[:1] for k, v in both.items()}, {k: v[1:] for k, v in both.items()}
            y = patched_row(n, u[:1], u[1:], None if x is None else x[:1], None if x is None else x[1:],
                            products or None, twins or None)
            return _row_replaced(output, module_output(adapter, y, u[1:]))

        def zero(_mod, _args, output):
            return _row_replaced(output, None)

        layer = layers[n]
        handles.append(get(layer, adapter.branch_module).register_forward_hook(replace))
        handles += [get(layer, p).register_forward_hook(zero) for p in adapter.parts]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _row_replaced(output, row: torch.Tensor | None):
    """A module's output (a tensor, or a tuple whose first entry is the tensor) with its second row (of a batch of
    two tokens, (2, 1, .) or (2, .) rows) replaced by ``row`` (zeros where None)."""
    t = output[0] if isinstance(output, tuple) else output
    rows = token_rows(t).clone()
    rows[1] = 0 if row is None else row.reshape(-1).to(rows.dtype)
    t = rows.reshape(t.shape)
    return (t,) + tuple(output[1:]) if isinstance(output, tuple) else t


_CLASS_FORWARD = object()  # a module whose forward is its class's (no instance attribute)


def _passthrough(hidden, *args, **kwargs):
    return hidden


def _zeros(hidden, *args, **kwargs):  # a part of a branch summed into the branch module's output (`Adapter.parts`)
    return torch.zeros_like(hidden)


def contextual_bases(model, layout: Layout, ids: torch.Tensor, head: bool = True, given: dict | None = None,
                     start: int = 0, states: dict | None = None, **kwargs) -> tuple[list[torch.Tensor], object]:
    """u_C of every layer (all positions) and the output of the run with the context (``head=False``:
    of the decoder alone, no logits; `trunk`). ``given``: a dict that receives, per layer n, the contextual
    products its modules computed ({matrix: (T, out)} from position ``start`` on; `Adapter.products`), for
    the kernels' ``given``. ``states``: a dict that receives every layer's output rows from ``start`` on
    (`layer_outputs`)."""
    record: dict = {}
    handles = _input_hooks(model, layout, record)
    if given is not None:
        handles += _product_hooks(model, layout, given, start)
    if states is not None:
        handles += _output_hooks(model, layout, states, start)
    if not head and trunk(model, head) is model:
        kwargs = {**last_logits_only(model), **kwargs}
    try:
        with offload.located(model, layout.layers):
            out = trunk(model, head)(ids, **kwargs)
    finally:
        for h in handles:
            h.remove()
    none = torch.empty(ids.shape[-1], 0)  # a layer without an MLP branch has no u_C: an empty (T, 0) placeholder
    return [_base(record[n], layout[n])[0] if n in record else none for n in range(len(layout))], out


def _output_hooks(model, layout: Layout, store: dict, start: int = 0) -> list:
    """Hooks that append, per layer n, the rows from ``start`` on of what the layer returns (its residual
    stream, (T, d)) to ``store[n]``: one entry per pass, so a run token by token leaves its rows in order."""
    handles = []
    for n, layer in enumerate(get(model, layout.layers)):
        def grab(_mod, _args, out, n=n):
            t = out[0] if isinstance(out, (tuple, list)) else out  # GPT-1's block returns a list
            rows = t[..., start:, :]  # tokens on the next-to-last axis, streams (AltUp) or the batch before them
            store.setdefault(n, []).append(rows.reshape(-1, *rows.shape[-2:]).detach().clone())

        handles.append(layer.register_forward_hook(grab))
    return handles


@contextmanager
def layer_outputs(model, layout: Layout):
    """``{layer: [rows of each pass]}``: every layer's output (the residual stream it hands on) in the passes
    run inside the block; `stacked` joins each layer's rows. The hooks are removed on exit."""
    store: dict = {}
    handles = _output_hooks(model, layout, store)
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def stacked(store: dict) -> list[torch.Tensor]:
    """Each layer's recorded rows (`layer_outputs`, `contextual_bases`'s ``states``) as one (streams, T, d) array,
    the passes joined along the tokens."""
    return [torch.cat(store[n], -2) for n in sorted(store)]
