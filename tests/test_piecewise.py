"""Piecewise activations work end to end: a leaky ReLU written as a Piecewise is checked, derived, proved, rendered
into kernels, validated on random stacks (float64 and float32) and reported, as the README's spec section allows.

The reference block evaluates activations with SymPy's PyTorch printer (Piecewise as ``where``), so a Piecewise or
a ``sign`` is computed elementwise on tensors; it agrees with torch's own functions."""

from __future__ import annotations

import pytest
import torch

from ctxpatch import api
from ctxpatch.cli import main
from numeric.check.reference import elementwise
from numeric.check.validate import BOUNDS
from symbolic import catalog

LEAKY = "Piecewise((x, x > 0), (0.01*x, True))"


def leaky_spec(tmp_path, kind: str = "gated"):
    base = catalog.text("llama") if kind == "gated" else catalog.text("gpt2")
    text = base.replace('activation = "silu"', f'activation = "{LEAKY}"').replace(
        'activation = "gelu_tanh"', f'activation = "{LEAKY}"')
    text = "\n".join(line for line in text.splitlines() if not line.startswith(("hf_model_types", "name")))
    path = tmp_path / f"leaky_{kind}.toml"
    path.write_text(f'name = "leaky_{kind}"\n{text}\n', encoding="utf-8")
    assert LEAKY in path.read_text()
    return path


@pytest.mark.parametrize(("expr", "torch_fn"), [
    (LEAKY, lambda v: torch.where(v > 0, v, 0.01 * v)),
    ("Piecewise((x, (x > 0) & (x < 3)), (sin(x), x < -1), (0.5*x, True))",
     lambda v: torch.where((v > 0) & (v < 3), v, torch.where(v < -1, torch.sin(v), 0.5 * v))),
    ("sign(x)*Abs(x)**0.5", lambda v: torch.sign(v) * v.abs().sqrt()),
    ("Heaviside(x)*x + Max(-7.0, Min(x, 7.0))", lambda v: torch.heaviside(v, torch.tensor(0.5, dtype=v.dtype)) * v
     + v.clamp(-7, 7)),
])
def test_the_reference_evaluates_piecewise_and_sign_elementwise(expr, torch_fn):
    v = torch.linspace(-6, 6, 241, dtype=torch.float64)
    assert torch.allclose(elementwise(expr)(v), torch_fn(v), rtol=1e-15, atol=0)


@pytest.mark.parametrize("kind", ["gated", "dense"])
def test_a_piecewise_activation_goes_through_the_whole_pipeline(kind, tmp_path, capsys):
    path = leaky_spec(tmp_path, kind)
    verdict = api.check(path)
    assert verdict.perfect_patch and verdict.derivation.verified
    assert main(["derive", str(path)]) == 0
    for backend, choice in (("numpy", "numpy.select([numpy.greater("), ("torch", "torch.where(torch.gt(")):
        code = [ln for ln in api.codegen(path, backend).splitlines() if not ln.lstrip().startswith(("#", '"'))]
        assert any(choice in ln for ln in code), backend  # the Piecewise printed as an elementwise choice, in code
    assert main(["codegen", "--spec", str(path), "-o", str(tmp_path / "kernels")]) == 0
    for dtype in ("float64", "float32"):
        out = api.validate(path, trials=2, dtype=dtype, layers=3)
        assert out["ok"] and out["max_rel_error"] <= BOUNDS[dtype], out
    assert main(["prove", str(path), "--brief"]) == 0
    files = api.report(path, "latex", tmp_path / "report", quick=True) + \
        api.report(path, "html", tmp_path / "report", quick=True)
    tex = next(f for f in files if f.suffix == ".tex").read_text()
    assert r"\begin{cases}" in tex  # the activation's definition, as SymPy prints a Piecewise
    assert next(f for f in files if f.suffix == ".html").stat().st_size > 10_000
    capsys.readouterr()
