"""Block specs: catalog round trip through TOML, and clear errors for malformed specs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ctxpatch.cli import main
from symbolic import catalog
from symbolic.errors import SpecError
from symbolic.spec import dump_toml, loads_toml, patchable_parameters

EXPECTED_CATALOG = {
    "vanilla", "vanilla_skip", "gpt2", "bert", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3",
    "olmo2", "gptj", "gpt_neox", "phi", "falcon", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe",
}


def test_catalog_has_every_required_architecture():
    assert EXPECTED_CATALOG <= set(catalog.names())


def test_catalog_entry_round_trips_through_toml(arch):
    spec = catalog.load(arch)
    assert loads_toml(dump_toml(spec)) == spec
    assert loads_toml(catalog.text(arch)) == spec


def test_spec_command_prints_the_catalog_toml(arch, capsys):
    assert main(["spec", arch]) == 0
    assert loads_toml(capsys.readouterr().out) == catalog.load(arch)


def test_archs_json_lists_the_catalog(capsys):
    import json

    assert main(["archs", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["archs"] == catalog.names()


def test_spec_language_describes_the_catalog_variety():
    gemma3, bert, gptj, qwen2_moe = (catalog.load(n) for n in ("gemma3", "bert", "gptj", "qwen2_moe"))
    assert gemma3.mlp.post_norm.scale == "one_plus" and gemma3.attention.post_norm is not None
    assert bert.mlp.post_ln.kind == "layer" and bert.mlp.post_ln.bias
    assert gptj.residual == "parallel" and gptj.shared_pre_norm
    assert qwen2_moe.moe.shared_expert == "gated" and not qwen2_moe.moe.renormalize
    assert catalog.load("mixtral").moe.gates_sum_to_one
    assert "shared.w_gate" in patchable_parameters(qwen2_moe)


GOOD = """
name = "t"
[mlp]
kind = "gated"
activation = "silu"
pre_norm = "rms"
"""


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        (GOOD + "colour = 3\n", ["colour", "unknown field", "Allowed fields"]),
        (GOOD.replace('"silu"', '"swish"'), ["mlp.activation", "swish", "silu"]),
        (GOOD.replace('"gated"', '"gatd"'), ["mlp.kind", "gatd", "'gated'", "Did you mean"]),
        (GOOD.replace('kind = "gated"', "kind = 3"), ["mlp.kind", "type str", "int 3"]),
        (GOOD.replace('pre_norm = "rms"', 'pre_norm = "batch"'), ["mlp.pre_norm", "batch", "'rms'", "'layer'"]),
        (GOOD.replace('pre_norm = "rms"', 'pre_norm = {kind = "rms", eps = -1.0}'), ["mlp.pre_norm.eps", "-1.0"]),
        (GOOD.replace('pre_norm = "rms"', 'pre_norm = {kind = "rms", scal = "plain"}'),
         ["mlp.pre_norm.scal", "unknown field", "scale"]),
        (GOOD + '[patch]\nallow = ["W_gat"]\n', ["patch.allow", "W_gat", "W_gate"]),
        (GOOD + '[patch]\nallow = ["W_up:rank7"]\n', ["patch.allow", "W_up:rank7", "W_up:rank1"]),
        (GOOD.replace('kind = "gated"', 'kind = "moe"'), ["[moe]", "mlp.kind"]),
        (GOOD + "[moe]\nexperts = 4\ntop_k = 9\n", ["top_k", "9"]),
        (GOOD.replace('"silu"', '"x*foo(x)"'), ["mlp.activation", "x*foo(x)"]),
        (GOOD.replace('"silu"', '"x*y"'), ["mlp.activation", "only the variable x"]),
        ('name = "t"\n', ["[mlp]", "missing"]),
        ("name = \n", ["not valid TOML"]),
        ('residual = "diagonal"\n' + GOOD, ["residual", "diagonal", "'parallel'"]),
        (GOOD + 'residual = "parallel"\n', ["mlp.residual", "'parallel'", "unknown field"]),
    ],
)
def test_malformed_spec_is_rejected_with_a_message_naming_the_problem(text, needles):
    with pytest.raises(SpecError) as info:
        loads_toml(text, "my_block.toml")
    message = str(info.value)
    assert message.startswith("my_block.toml")
    for needle in needles:
        assert needle in message, (needle, message)


def test_bad_spec_file_exits_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace('"silu"', '"swish"'))
    for verb in ("check", "derive"):
        proc = subprocess.run([sys.executable, "-m", "ctxpatch.cli", verb, str(bad)], capture_output=True, text=True)
        assert proc.returncode == 2
        assert "Traceback" not in proc.stderr
        assert str(bad) in proc.stderr and "mlp.activation" in proc.stderr and "'swish'" in proc.stderr


@pytest.mark.parametrize("argv", [["check", "gema3"], ["spec", "lama"], ["derive", "nope/none.toml"],
                                  ["derive", "gemma3", "--strategy", "down_bias"],
                                  ["check", "gemma3", "--strategy", "no_such_strategy"]])
def test_bad_names_exit_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.strip() and "Traceback" not in err


def test_custom_activation_is_accepted_and_parsed():
    spec = loads_toml(GOOD.replace('"silu"', '"x*sigmoid(1.702*x)"'))
    assert spec.mlp.activation == "x*sigmoid(1.702*x)"


def test_symbolic_spec_is_the_one_import_path_of_its_modules():
    """`symbolic.spec` re-exports every public name its four modules define (data, parameters, TOML in and out),
    the very objects, so that `from symbolic.spec import X` keeps working wherever X lives."""
    import ast
    import importlib

    import symbolic.spec as face

    for name in ("spec_data", "spec_params", "spec_read", "spec_write"):
        module = importlib.import_module(f"symbolic.{name}")
        tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
        defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)}
        defined |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        public = {n for n in defined if not n.startswith("_")}
        assert public, name
        assert public <= set(face.__all__), (name, public - set(face.__all__))
        assert all(getattr(face, n) is getattr(module, n) for n in public), name
