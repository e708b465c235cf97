"""Bounded inputs: every hostile input of issue 28 (and one of each class beside it) is refused before work starts,
on the command line with exit 2 and one message naming the field or option, the value and the allowed range, in
Python with a named exception (`SpecError`, `CtxpatchInputError`). The bounds are those of `symbolic.limits`."""

from __future__ import annotations

import os
import re

import pytest

import ctxpatch
from ctxpatch.cli import main
from numeric.check.validate import Setup, memory_needed
from symbolic import catalog, limits
from symbolic.errors import CtxpatchInputError, SpecError
from symbolic.spec import BlockSpec, MLPSpec, MoESpec, NormSpec

LLAMA = catalog.text("llama")
MIXTRAL = catalog.text("mixtral")


def run(argv, capsys) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def spec_file(tmp_path, text: str, name: str = "block.toml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def with_activation(expr: str, base: str = LLAMA) -> str:
    return base.replace('activation = "silu"', f"activation = {expr!r}".replace("'", '"'))


# --------------------------------------------------------------------------- spec files


#: (what the spec file says, words the message must hold: the field, the value, the allowed range)
SPEC_FILES = {
    "eps_with_5000_digits": (LLAMA.replace("eps = 1e-6", "eps = 1" + "0" * 5000),
                             ["line 9", "`eps`", "digits", str(limits.EXPERTS.hi)]),
    "eps_of_400_digits": (LLAMA.replace("eps = 1e-6", "eps = 1" + "0" * 400),
                          ["`norm.eps`", "401 digits", "from 0 to 1"]),
    "eps_infinite": (LLAMA.replace("eps = 1e-6", "eps = inf"), ["`norm.eps`", "inf", "from 0 to 1"]),
    "tables_2000_deep_inline": (LLAMA + "\n[extra]\nx = " + "{a = " * 2000 + "1" + "}" * 2000 + "\n",
                                ["nest", f"at most {limits.SPEC_DEPTH}"]),
    "tables_2000_deep_headers": (LLAMA + "\n[" + ".".join(["a"] * 2000) + "]\n",
                                 ["a.a.a", "nests", f"at most {limits.SPEC_DEPTH}"]),
    "arrays_2000_deep": (LLAMA.replace('hf_model_types = ["llama"]', "hf_model_types = " + "[" * 2000 + "]" * 2000),
                         ["nest", f"at most {limits.SPEC_DEPTH}"]),
    "activation_x_to_the_million": (with_activation("x**1000000"),
                                    ["mlp.activation", "x**1000000", "degree", str(limits.EXPR_DEGREE)]),
    "activation_exp_tower": (with_activation("exp(exp(exp(exp(x))))"),
                             ["mlp.activation", "exp(exp(exp(exp(x))))", "OverflowError", "[-100, 100]"]),
    "activation_20000_terms": (with_activation("+".join(["x"] * 20000)),
                               ["mlp.activation", "39999 characters", f"at most {limits.TEXT_CHARS}"]),
    "activation_1000_terms": (with_activation("+".join(["x"] * 1000)),
                              ["mlp.activation", "1999 characters", f"at most {limits.EXPR_CHARS}"]),
    "activation_200_nodes": (with_activation("+".join(["x"] * 120)),
                             ["mlp.activation", f"more than {limits.EXPR_NODES} nodes"]),
    "activation_nested_deep": (with_activation("tanh(" * 20 + "x" + ")" * 20),
                               ["mlp.activation", f"deeper than {limits.EXPR_DEPTH}"]),
    "activation_power_tower": (with_activation("x**(2**2**2**2)"), ["mlp.activation", "exponent", "a number"]),
    "activation_imaginary": (with_activation("I*x"), ["mlp.activation", "'I*x'", "imaginary"]),
    "activation_complex_infinity": (with_activation("zoo*x"), ["mlp.activation", "'zoo*x'", "complex infinity"]),
    "activation_nan": (with_activation("nan*x"), ["mlp.activation", "not a number"]),
    "activation_infinity": (with_activation("Max(x, -oo)"), ["mlp.activation", "infinity"]),
    "activation_imaginary_by_arithmetic": (with_activation("sqrt(-1)*x"), ["mlp.activation", "holds I"]),
    "activation_division_by_zero": (with_activation("x/0"), ["mlp.activation", "holds zoo"]),
    "activation_complex_literal": (with_activation("2j*x"), ["mlp.activation", "complex number 2j"]),
    "activation_pole": (with_activation("1/x"), ["mlp.activation", "x = 0", "[-100, 100]"]),
    "activation_branch_cut": (with_activation("log(x)"), ["mlp.activation", "x = -100", "[-100, 100]"]),
    "activation_huge_literal": (with_activation("1" + "0" * 40 + "*x"), ["mlp.activation", "30 digits", "1e+30"]),
    "activation_piecewise_without_otherwise": (with_activation("Piecewise((x, x > 0))"),
                                              ["mlp.activation", "no branch", "otherwise"]),
    "activation_attribute": (with_activation("x.__class__"), ["mlp.activation", "Attribute", "Allowed"]),
    "name_dunder_init": (LLAMA.replace('name = "llama"', 'name = "__init__"'),
                         ["`name`", "'__init__'", "__init__.py", f"at most {limits.NAME_CHARS}"]),
    "name_keyword": (LLAMA.replace('name = "llama"', 'name = "class"'), ["`name`", "'class'", "keyword"]),
    "name_too_long": (LLAMA.replace('name = "llama"', f'name = "{"b" * 300}"'), ["`name`", "300 characters"]),
    "name_not_ascii": (LLAMA.replace('name = "llama"', 'name = "bl\u00f6ck"'), ["`name`", "ASCII"]),
    "experts_a_billion": (re.sub(r"experts = \d+", "experts = 1000000000", MIXTRAL),
                          ["`moe.experts`", "1000000000", "from 1 to 4096"]),
    "top_k_a_billion": (re.sub(r"top_k = \d+", "top_k = 1000000000", MIXTRAL), ["`moe.top_k`", "from 1 to 128"]),
    "branch_scale_tiny": (LLAMA.replace("[mlp]", "[mlp]\nbranch_scale = 1e-300"),
                          ["`mlp.branch_scale`", "1e-300", "nonzero"]),
    "description_megabyte": (LLAMA.replace("description = ", 'description = "' + "d" * 70000 + '" #'),
                             ["bytes", f"at most {limits.SPEC_BYTES}"]),
    "description_long": (LLAMA.replace("description = ", 'description = "' + "d" * 3000 + '" #'),
                         ["`description`", "3000 characters", f"at most {limits.TEXT_CHARS}"]),
    "model_types_many": (LLAMA.replace('hf_model_types = ["llama"]', "hf_model_types = [" + '"t", ' * 100 + "]"),
                         ["`hf_model_types`", "100 entries", f"at most {limits.LIST_ITEMS}"]),
}


@pytest.mark.parametrize("case", sorted(SPEC_FILES))
def test_hostile_spec_files_exit_2_naming_field_value_and_range(case, tmp_path, capsys):
    text, words = SPEC_FILES[case]
    path = spec_file(tmp_path, text)
    code, err = run(["check", path], capsys)
    assert code == 2, err
    assert err.startswith(f"ctxpatch check: {path}") and err.count("\n") == 1, err
    for word in words:
        assert word in err, (word, err)
    with pytest.raises(SpecError):  # the Python face: the same error, by name
        ctxpatch.check(path)


def test_a_spec_file_that_is_a_device_or_a_pipe_is_not_read(tmp_path, capsys):
    fifo = tmp_path / "pipe.toml"
    os.mkfifo(fifo)  # reading it would block forever
    code, err = run(["check", fifo], capsys)
    assert code == 2 and "not a regular file" in err


def test_a_spec_named_init_cannot_overwrite_the_kernel_package(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "torch").mkdir(parents=True)
    (out / "torch" / "__init__.py").write_text("# the user's package marker\n")
    path = spec_file(tmp_path, SPEC_FILES["name_dunder_init"][0])
    code, err = run(["codegen", "--spec", path, "-o", out], capsys)
    assert code == 2 and "__init__" in err
    assert (out / "torch" / "__init__.py").read_text() == "# the user's package marker\n"
    assert sorted(p.name for p in out.rglob("*")) == ["__init__.py", "torch"]


# --------------------------------------------------------------------------- Piecewise and the spec dataclasses


def test_specs_built_in_python_are_checked_as_files_are():
    """The dataclasses check what the TOML reader checks: a spec built in Python meets the same bounds."""
    mlp = MLPSpec(kind="gated", activation="silu", pre_norm=NormSpec("rms"))
    cases = [
        (lambda: NormSpec("rms", eps=10**400), "eps"),
        (lambda: NormSpec("rms", eps=float("nan")), "eps"),
        (lambda: MLPSpec(kind="gated", activation="I*x"), "mlp.activation"),
        (lambda: MLPSpec(kind="gated", up_activation="x**100"), "mlp.up_activation"),
        (lambda: MLPSpec(kind="dense", branch_scale=0.0), "mlp.branch_scale"),
        (lambda: MoESpec(experts=10**9, top_k=2), "moe.experts"),
        (lambda: MoESpec(experts=8, top_k=2, routed_scale=1e300), "moe.routed_scale"),
        (lambda: BlockSpec(name="__init__", mlp=mlp), "`name`"),
        (lambda: BlockSpec(name="import", mlp=mlp), "`name`"),
        (lambda: BlockSpec(name=7, mlp=mlp), "`name`"),
    ]
    for build, words in cases:
        with pytest.raises(SpecError, match=re.escape(words)):
            build()


# --------------------------------------------------------------------------- options and the Python face


@pytest.mark.parametrize(("argv", "words"), [
    (["validate", "llama", "--seed", "99999999999999999999999"], ["--seed", "99999999999999999999999", "4294967295"]),
    (["validate", "llama", "--seed", "-1"], ["--seed", "from 0 to 4294967295"]),
    (["validate", "llama", "--d", "65536", "--m", "65536"], ["--d 65536", "--m 65536", "GiB", "available"]),
    (["validate", "llama", "--d", "131072"], ["--d", "from 2 to 65536"]),
    (["validate", "llama", "--layers", "100000"], ["--layers", "from 1 to 256"]),
    (["validate", "llama", "--context-len", "1" + "0" * 5000], ["--context-len", "not an integer"]),
    (["validate", "llama", "--heads", "3"], ["--heads 3", "divide"]),
    (["hf-check", "llama", "--generate", "10000000"], ["--generate", "from 0 to 4096"]),
    (["hf-check", "llama", "--seed", "99999999999999999999999"], ["--seed", "4294967295"]),
    (["precision", "llama", "--trials", "100000"], ["--trials", "from 1 to 1000"]),
    (["experiment", "--tokens", "100000"], ["--tokens", "from 1 to 4096"]),
])
def test_hostile_options_exit_2_naming_option_value_and_range(argv, words, capsys):
    code, err = run(argv, capsys)
    assert code == 2, err
    for word in words:
        assert word in err, (word, err)


def test_moe_with_a_billion_experts_is_refused_by_validate_too(capsys):
    code, err = run(["validate", "mixtral", "--layers", "1"], capsys)
    assert code == 0  # the catalog's mixtral is fine ...
    with pytest.raises(CtxpatchInputError, match="`experts` has the value 1000000000"):
        ctxpatch.validate("mixtral", experts=10**9)  # ... its expert count overridden to a billion is not


@pytest.mark.parametrize(("setup", "words"), [
    ({"dtype": "float16"}, ["dtype", "'float16'", "'float64'", "'float32'"]),
    ({"d": 65536, "m": 65536}, ["GiB", "available"]),
    ({"layers": "4"}, ["`layers`", "'4'", "from 1 to 256"]),
    ({"layers": True}, ["`layers`", "True"]),
    ({"seed": 10**23}, ["`seed`", "4294967295"]),
    ({"trials": 0}, ["`trials`", "from 1 to 1000"]),
    ({"rope": "yes"}, ["`rope`", "'yes'"]),
    ({"heads_per_layer": 4}, ["option", "'heads_per_layer'", "'heads'"]),
])
def test_the_python_face_names_the_bad_option(setup, words):
    with pytest.raises(CtxpatchInputError) as info:
        ctxpatch.validate("llama", **setup)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_the_memory_limit_comes_from_the_memory_available(monkeypatch):
    """The same sizes are accepted or refused by the memory the machine has when the run is planned."""
    from numeric.check import validate as module

    spec, setup = catalog.load("llama"), Setup(d=256, m=1024, layers=2)
    need = memory_needed(spec, setup)
    assert 0 < need < 2**30
    monkeypatch.setattr(limits, "available_memory", lambda: int(need / limits.MEMORY_FRACTION) - 1)
    with pytest.raises(CtxpatchInputError, match="GiB of memory available"):
        module.check_memory(spec, setup)
    monkeypatch.setattr(limits, "available_memory", lambda: int(need / limits.MEMORY_FRACTION) + 1)
    module.check_memory(spec, setup)


def test_the_memory_estimate_bounds_what_a_run_uses():
    """`memory_needed` is an upper bound, and not a wild one: the peak resident memory a run adds to the process
    (its peak less the memory resident before it) stays below the estimate, and above a quarter of it. The peak
    is /proc's VmHWM, the process's own: ru_maxrss is carried over from the (large) parent across exec."""
    import subprocess
    import sys

    script = (
        "import os, re\n"
        "from numeric.check.validate import Setup, memory_needed, validate\n"
        "from symbolic import catalog\n"
        "spec = catalog.load('llama')\n"
        "validate(spec, Setup(layers=1), trials=1)\n"
        "with open('/proc/self/statm') as f:\n"
        "    before = int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')\n"
        "setup = Setup(layers=4, d=768, m=3072, context_len=64, query_len=64)\n"
        "validate(spec, setup, trials=1)\n"
        "peak = int(re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read()).group(1)) * 1024\n"
        "print(peak - before, memory_needed(spec, setup))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=True)
    used, need = map(int, out.stdout.split())
    assert need / 4 <= used <= need, (used, need)
