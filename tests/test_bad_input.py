"""Bad input never crashes: every verb and every file, folder or name argument exits 2 with a message
naming the file or option, the value and what is allowed, and nothing is written outside the folder
the user named."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctxpatch.cli import main
from symbolic import catalog

GOOD = catalog.text("llama")


def run(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def spec_file(tmp_path, text: str, name: str = "block.toml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_non_utf8_spec_file(tmp_path, capsys):
    path = tmp_path / "latin1.toml"
    path.write_bytes(GOOD.replace("Llama", "Llam\xe4").encode("latin-1"))
    code, err = run(["check", str(path)], capsys)
    assert code == 2 and str(path) in err and "UTF-8" in err


@pytest.mark.parametrize("activation", ["floor(x)", "1", "gamma(x)", "x + y"])
def test_activation_that_cannot_be_evaluated_is_refused_by_check(tmp_path, capsys, activation):
    path = spec_file(tmp_path, GOOD.replace('activation = "silu"', f'activation = "{activation}"'))
    code, err = run(["check", str(path)], capsys)
    assert code == 2 and "mlp.activation" in err and repr(activation) in err and "Allowed" in err


@pytest.mark.parametrize("verb", [["codegen", "--spec", "llama"], ["report", "vanilla", "--format", "latex"]])
def test_output_path_that_is_a_file(tmp_path, capsys, verb):
    target = tmp_path / "a_file"
    target.write_text("keep me")
    code, err = run([*verb, "-o", str(target)], capsys)
    assert code == 2 and str(target) in err and "not a folder" in err
    assert target.read_text() == "keep me"


def test_output_folder_that_cannot_be_created(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, err = run(["codegen", "--spec", "llama", "-o", str(blocker / "sub")], capsys)
    assert code == 2 and str(blocker) in err


@pytest.mark.parametrize("name", ["a/b", "../evil", "my-block", "1st", ""])
def test_spec_names_that_are_not_identifiers(tmp_path, capsys, name):
    path = spec_file(tmp_path, GOOD.replace('name = "llama"', f'name = "{name}"'))
    out = tmp_path / "out"
    code, err = run(["report", str(path), "--format", "latex", "-o", str(out)], capsys)
    assert code == 2 and "`name`" in err
    assert not (tmp_path / "evil.tex").exists() and not out.exists()


def test_rms_norm_with_a_bias_is_refused_not_dropped(tmp_path, capsys):
    path = spec_file(tmp_path, GOOD.replace('pre_norm = "rms"', 'pre_norm = { kind = "rms", bias = true }'))
    code, err = run(["check", str(path)], capsys)
    assert code == 2 and "pre_norm.bias` is true" in err and "layer" in err


def test_hf_model_types_must_be_strings(tmp_path, capsys):
    path = spec_file(tmp_path, GOOD.replace('hf_model_types = ["llama"]', "hf_model_types = [1, 2]"))
    code, err = run(["check", str(path)], capsys)
    assert code == 2 and "hf_model_types[0]" in err and "string" in err


def test_a_local_folder_does_not_hide_a_catalog_entry(tmp_path, capsys, monkeypatch):
    (tmp_path / "gemma3").mkdir()
    monkeypatch.chdir(tmp_path)
    code, _ = run(["spec", "gemma3", "--json"], capsys)
    assert code == 0


def test_a_folder_given_as_a_spec_file(tmp_path, capsys):
    (tmp_path / "x.toml").mkdir()
    code, err = run(["check", str(tmp_path / "x.toml")], capsys)
    assert code == 2 and "folder" in err


@pytest.mark.parametrize("argv", [["precision", "llama", "--trials", "0"], ["validate", "llama", "--layers", "-1"],
                                  ["hf-check", "llama", "--generate", "-2"], ["experiment", "--tokens", "0"],
                                  ["validate", "llama", "--trials", "many"]])
def test_counts_out_of_range(argv, capsys):
    code, err = run(argv, capsys)
    assert code == 2 and "argument --" in err and ("must be at least" in err or "not an integer" in err)


def test_every_verb_has_help_and_json(capsys):
    from ctxpatch.cli import build_parser

    verbs = build_parser()._subparsers._group_actions[0].choices
    for name, parser in verbs.items():
        assert main([name, "--help"]) == 0
        assert "--json" in parser.format_help(), name
    capsys.readouterr()


VERBS = ["archs", "spec", "check", "derive", "prove", "codegen", "validate", "hf-check", "report", "precision",
         "experiment"]
TOKENS = ["gemma3", "llama", "nope", "--json", "--strategy", "stable", "norm_vector", "--input-strategy", "rank1",
          "-o", "--trials", "0", "-3", "x", "--format", "pdf", "--layers", "--dtype", "float16", "--spec", "a.toml",
          "--check", "\u00e9", "", "--latex", "all"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(verb=st.sampled_from(VERBS), rest=st.lists(st.sampled_from(TOKENS), max_size=4))
def test_fuzzed_arguments_exit_0_1_or_2_without_a_traceback(tmp_path, capsys, verb, rest):
    # The slow verbs are fuzzed up to their argument checks (a trailing bad option), and codegen never
    # rewrites the committed kernels: what runs fully is archs, spec, check, derive and codegen --check.
    if verb in ("validate", "precision", "hf-check", "experiment", "prove", "report"):
        rest = [*rest, "--no-such-option"]
    if verb == "codegen":
        rest = [*rest, "--check"]
    cwd = os.getcwd()
    os.chdir(tmp_path)  # whatever a fuzzed command writes stays in the test's folder
    try:
        code = main([verb, *rest])
    finally:
        os.chdir(cwd)
    assert code in (0, 1, 2)
    assert "Traceback" not in capsys.readouterr().err


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(["name", "activation", "pre_norm", "hf_model_types", "kind", "eps"]),
       value=st.one_of(st.integers(-3, 3), st.text(max_size=6), st.lists(st.integers(), max_size=2),
                       st.booleans(), st.floats(allow_nan=True)))
def test_fuzzed_spec_fields_exit_0_1_or_2(tmp_path, capsys, field, value):
    import json

    lines = [line for line in GOOD.splitlines() if not line.strip().startswith(f"{field} =")]
    at = next(i for i, line in enumerate(lines) if line.startswith("[mlp]")) + 1 if field in (
        "activation", "pre_norm", "kind") else 1
    literal = "nan" if isinstance(value, float) and value != value else json.dumps(value)
    lines.insert(at, f"{field} = {literal}")
    path = spec_file(tmp_path, "\n".join(lines) + "\n")
    code, _ = run(["check", str(path), "--json"], capsys)
    assert code in (0, 1, 2)


# --------------------------------------------------------------------------- errors by kind


def test_bad_input_has_one_base_and_a_kind_per_source():
    """Specs and models (with what is passed with them) are bad input of their own kind, both under one base that
    the command line maps to exit 2; a failed side condition is arithmetic, not bad input."""
    from symbolic.errors import CtxpatchInputError, ModelInputError, PatchConditionError, SpecError, bad_value

    assert issubclass(SpecError, CtxpatchInputError) and issubclass(ModelInputError, CtxpatchInputError)
    assert issubclass(CtxpatchInputError, ValueError)
    assert not issubclass(ModelInputError, SpecError) and not issubclass(SpecError, ModelInputError)
    assert not issubclass(PatchConditionError, CtxpatchInputError)
    err = bad_value("codegen", "backend", "jax", ["numpy", "torch"], kind=CtxpatchInputError)
    assert type(err) is CtxpatchInputError and "Allowed: 'numpy', 'torch'" in str(err)
    assert type(bad_value("s.toml", "mlp.kind", "dens", ["dense"])) is SpecError


@pytest.mark.parametrize(("argv", "words"), [
    (["check", "no_such_arch"], "no_such_arch"),  # a spec
    (["codegen", "--strategy", "stable"], "--spec"),  # an option (the base class)
    (["hf-check", "t5"], "t5"),  # a model
])
def test_every_kind_of_bad_input_exits_2_with_its_message(argv, words, capsys):
    code, err = run(argv, capsys)
    assert code == 2 and words in err and err.startswith(f"ctxpatch {argv[0]}: ")
