"""Bad input never crashes: every verb and every file, folder or name argument exits 2 with a message
naming the file or option, the value and what is allowed, and nothing is written outside the folder
the user named."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sandbox import sandbox, stray_files

from ctxpatch.cli import main
from ctxpatch.reporting import FORMATS
from symbolic import catalog
from symbolic.errors import CtxpatchInputError, PatchConditionError
from symbolic.spec import dump_toml

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


@pytest.mark.parametrize("activation", ["sin(x)", "cos(x)", "cos(x) - 1", "sin(x)**2", "x + sin(x)"])
@pytest.mark.parametrize("strategy", [[], ["--input-strategy", "up_only"], ["--input-strategy", "gate_only"]])
def test_periodic_activations_are_answered_not_crashed(tmp_path, capsys, activation, strategy):
    """Zeros that are images of the integers (sin: n pi) have measure 0; limits that oscillate (cos at infinity) are
    not limits; x + sin(x) is onto with no closed-form inverse: each is an answer or a named refusal."""
    path = spec_file(tmp_path, GOOD.replace('activation = "silu"', f'activation = "{activation}"'))
    code, err = run(["check", str(path), *strategy], capsys)
    assert code in (0, 2) and (code == 0 or "ctxpatch check" in err)


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
    assert code == 2 and "argument --" in err and ("must be from" in err or "not an integer" in err)


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


# --------------------------------------------------------------------------- the fuzz over hostile inputs
#
# Random specs with hostile field values and hostile activations, hostile options, hostile arguments to the Python
# face. The only outcomes allowed: success, exit 1 (a failed check), exit 2 with a one-paragraph message (in Python
# a `CtxpatchInputError` or a `PatchConditionError`); never a traceback, never more than EXAMPLE_SECONDS for one
# example (an alarm stops it), never a file outside the output folder (each example runs in a `sandbox`).

EXAMPLE_SECONDS = 60
FUZZ = settings(max_examples=15, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


class Hang(BaseException):
    """An example ran past EXAMPLE_SECONDS (a BaseException, so that no `except Exception` swallows it)."""


@contextlib.contextmanager
def within(seconds: float):
    def alarm(signum, frame):
        raise Hang(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_watched(argv: list[str], base: Path, capsys) -> tuple[int, str]:
    """``ctxpatch argv`` (OUT: the output folder) in a sandbox, within EXAMPLE_SECONDS; its exit code and stderr."""
    base.mkdir(parents=True)
    with sandbox(base) as folders, within(EXAMPLE_SECONDS):
        code = main([a.replace("OUT", str(folders["out"])) for a in argv])
    captured = capsys.readouterr()
    assert stray_files(folders) == [], argv
    assert code in (0, 1, 2), (argv, code)
    assert "Traceback" not in captured.err and "Traceback" not in captured.out, argv
    if code == 2:  # one message that says which command refused what
        assert captured.err.startswith(("ctxpatch ", "usage: ctxpatch")), captured.err
    return code, captured.err


def toml_value(v) -> str:
    """A TOML literal for a Python value (strings escaped as JSON does, which TOML reads)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if v != v else "inf" if v == math.inf else "-inf" if v == -math.inf else repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(i) for i in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {toml_value(i)}" for k, i in v.items()) + "}"
    return json.dumps(v) if isinstance(v, str) else str(v)


def set_field(text: str, field: str, literal: str) -> str:
    """The canonical TOML `text` (`dump_toml`) with ``table.key`` (or a top-level key) set to `literal`."""
    table, _, key = field.rpartition(".")
    lines = text.splitlines()
    start = 0
    if table:
        header = f"[{table}]"
        if not any(ln.split("#")[0].strip() == header for ln in lines):
            lines += ["", header]
        start = next(i for i, ln in enumerate(lines) if ln.split("#")[0].strip() == header) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("[")), len(lines))
    lines = [ln for i, ln in enumerate(lines) if not (start <= i < end and ln.startswith(f"{key} ="))]
    lines.insert(start, f"{key} = {literal}")
    return "\n".join(lines) + "\n"


SPEC_FIELDS = ["name", "description", "hf_model_types", "residual", "skip", "shared_pre_norm", "norm.eps",
               "norm.scale", "attention.pre_norm", "mlp.kind", "mlp.activation", "mlp.up_activation",
               "mlp.out_activation", "mlp.branch_scale", "mlp.bias", "mlp.pre_norm", "mlp.mid_norm", "moe.experts",
               "moe.top_k", "moe.groups", "moe.topk_groups", "moe.routed_scale", "patch.allow", "patch.strategy"]
HUGE = [10**3, 10**9, 2**63, 10**30, -(10**30), 10**400, 1e-300, 5e-324, 1e300, -0.0]
NUMBERS = st.one_of(st.integers(-3, 9), st.sampled_from(HUGE), st.floats(allow_nan=True, allow_infinity=True))
TEXTS = st.one_of(st.text(st.characters(blacklist_categories=["Cs"]), max_size=8),  # no lone surrogates: UTF-8 text
                  st.sampled_from(["", "x" * 3000, "__init__", "class", "bl\u00f6ck", "a/b", "none", "rms", "gated",
                                   "moe", "one_plus", "W_*", "*:rank1"]))
DEEP = st.sampled_from(["DEEP_TABLE", "DEEP_ARRAY"])
VALUES = st.one_of(NUMBERS, TEXTS, st.booleans(), st.lists(st.one_of(NUMBERS, TEXTS), max_size=3),
                   st.dictionaries(st.sampled_from(["kind", "eps", "scale", "bias", "up"]), st.one_of(NUMBERS, TEXTS),
                                   max_size=3), DEEP)
#: Pieces of hostile activations, one per class: complex and infinite constants, big exponents and towers,
#: overflow, poles and branch cuts, huge and tiny numbers, unknown names and syntax, size and depth.
HOSTILE = ["I", "zoo", "oo", "-oo", "nan", "3j", "x**1000000", "x**(2**2**2**2)", "((x**4)**4)**4", "x**x**x",
           "exp(exp(exp(exp(x))))", "exp(x**2)", "1/x", "1/(x - 0.5)", "log(x)", "sqrt(x)", "x**(1/3)", "x/0",
           "0**-1", "1e999", "1e-999", "9" * 40, "y", "gamma(x)", "floor(x)", "__import__('os')", "x.real",
           "(x > 0)", "Piecewise((x, x > 0))", "Piecewise((x, 0 < x < 1), (0, True))", "tanh(" * 15 + "x" + ")" * 15,
           "+".join(["x"] * 150), "+".join(["x"] * 20000), "lambda: x", "[x]", "'x'", "x if x else 1", "Max()",
           "Heaviside(x, H0=1)", "Rational(1, 0)", "sqrt(-1)", "E**(E**(E**x))", "x\x00", ""]
BENIGN = ["x", "2*x", "tanh(x)", "sigmoid(x)", "Max(0, x)", "0.5", "Piecewise((x, x > 0), (0.01*x, True))"]
EXPRESSIONS = st.one_of(
    st.sampled_from(HOSTILE),
    st.builds("{} {} {}".format, st.sampled_from(BENIGN), st.sampled_from(["+", "-", "*", "/", "**"]),
              st.sampled_from(HOSTILE).map("({})".format)),
    st.builds("{}({})".format, st.sampled_from(["exp", "tanh", "sigmoid", "Abs", "sin", "erf"]),
              st.sampled_from(HOSTILE)),
)


#: Plausible values of each field, so that some fuzzed specs are valid and go on to check, validate and codegen.
ACTIVATIONS = ["silu", "gelu", "relu", "identity", "x*sigmoid(1.702*x)", "tanh(x)", BENIGN[-1]]
PLAUSIBLE = {
    "name": ["blk", "my_block"], "description": ["a block"], "hf_model_types": [[], ["llama"]],
    "residual": ["sequential", "parallel"], "skip": [True, False], "shared_pre_norm": [False],
    "norm.eps": [1e-5, 0, 1e-12, 0.5], "norm.scale": ["plain", "one_plus", "none"],
    "attention.pre_norm": ["rms", "layer", "none"], "mlp.kind": ["dense", "gated"], "mlp.activation": ACTIVATIONS,
    "mlp.up_activation": ACTIVATIONS, "mlp.out_activation": ACTIVATIONS, "mlp.branch_scale": [0.5, 2, -1],
    "mlp.bias": [True, False], "mlp.pre_norm": ["rms", "layer"], "mlp.mid_norm": ["none", "rms"],
    "moe.experts": [4, 8, 16], "moe.top_k": [1, 2], "moe.groups": [1, 2], "moe.topk_groups": [1],
    "moe.routed_scale": [2.5, 1.0], "patch.allow": [["*"], ["W_*"]], "patch.strategy": ["stable", "down_rank1"],
}
CHANGES = st.one_of(
    st.tuples(st.sampled_from(SPEC_FIELDS), VALUES),  # a hostile value
    st.sampled_from(SPEC_FIELDS).flatmap(lambda f: st.tuples(st.just(f), st.sampled_from(PLAUSIBLE[f]))),
    st.tuples(st.sampled_from(["mlp.activation", "mlp.up_activation", "mlp.out_activation"]), EXPRESSIONS),
)


def literal(value) -> str:
    if value == "DEEP_TABLE":
        return "{a = " * 2000 + "1" + "}" * 2000
    if value == "DEEP_ARRAY":
        return "[" * 2000 + "]" * 2000
    return toml_value(value)


@FUZZ
@given(arch=st.sampled_from(["llama", "gemma3", "mixtral", "deepseek_v3", "gpt2", "bert"]),
       changes=st.lists(CHANGES, min_size=1, max_size=3))
def test_fuzzed_specs_are_answered_or_refused_with_a_message(tmp_path, capsys, arch, changes):
    """A catalog spec with hostile (or plausible) fields and activations: check, then (if it parsed) validate and
    codegen -o."""
    text = dump_toml(catalog.load(arch))
    for field, value in changes:
        text = set_field(text, field, literal(value))
    base = tmp_path / f"ex{len(list(tmp_path.iterdir()))}"
    path = base.parent / f"{base.name}.toml"
    path.write_text(text, encoding="utf-8")
    code, err = run_watched(["check", str(path)], base / "check", capsys)
    if code == 2:
        return
    run_watched(["validate", str(path), "--layers", "1", "--trials", "1"], base / "validate", capsys)
    run_watched(["codegen", "--spec", str(path), "-o", "OUT"], base / "codegen", capsys)


#: Options of the verbs with a value each, and hostile values: beyond either end of the range, not integers,
#: numbers no integer type holds; small valid values too (so that relations between options are reached).
OPTIONS = {
    "validate": ["--layers", "--trials", "--context-len", "--query-len", "--d", "--m", "--heads", "--kv-heads",
                 "--seed", "--dtype"],
    "hf-check": ["--layers", "--context-len", "--query-len", "--generate", "--seed", "--dtype"],
    "precision": ["--trials"],
    "experiment": ["--tokens", "--dtype", "--patch-dtype", "--model"],
    "report": ["--format", "-o"],
    "codegen": ["--spec", "-o", "--strategy"],
    "models": ["--markdown", "--types"],
}
OPTION_VALUES = ["0", "-1", "1", "2", "3", "6", "257", "1001", "4097", "65537", "4294967296", "99999999999999999999999",
                 "1" + "0" * 5000, "1e3", "0x10", "", " ", "nan", "float16", "\u0661\u0662", "x" * 300, "a.toml",
                 "/dev/zero", "OUT", "OUT/a.md"]
#: The verbs that run long when every option is valid: fuzzed up to their checks (a trailing unknown option).
HEAVY = {"hf-check", "precision", "experiment", "report", "models", "codegen"}


@settings(FUZZ, max_examples=40)  # each example is answered by the argument checks: cheap
@given(verb=st.sampled_from(sorted(OPTIONS)), picks=st.lists(st.tuples(st.integers(0, 9),
                                                                       st.sampled_from(OPTION_VALUES)),
                                                             min_size=1, max_size=3))
def test_fuzzed_options_are_answered_or_refused_with_a_message(tmp_path, capsys, verb, picks):
    names = OPTIONS[verb]
    argv = [verb] + (["llama"] if verb in ("validate", "hf-check", "precision", "report") else [])
    for i, value in picks:
        argv += [names[i % len(names)], value]
    if verb in HEAVY:
        argv.append("--no-such-option")
    run_watched(argv, tmp_path / f"ex{len(list(tmp_path.iterdir()))}", capsys)


#: Hostile arguments of the Python face: each must return or raise a named ctxpatch error.
ODD = st.one_of(st.none(), st.integers(-2, 2), st.sampled_from([10**23, -(10**23), 2.5, math.nan, math.inf, True]),
                st.text(max_size=6), st.sampled_from(["float16", "x" * 300, "a\x00b", "/dev/zero", "__init__"]),
                st.lists(st.integers(), max_size=2))
FACE = {
    "check": ("spec", "strategy", "input_strategy"),
    "derive": ("spec", "strategy", "input_strategy"),
    "codegen": ("spec", "backend", "strategy"),
    "validate": ("spec", "trials", "seed", "layers", "d", "m", "heads", "kv_heads", "context_len", "query_len",
                 "dtype", "rope", "experts", "strategy"),
    "report": ("spec", "fmt"),
    "prove": ("target",),
}


@FUZZ
@given(function=st.sampled_from(sorted(FACE)), picks=st.lists(st.tuples(st.integers(0, 20), ODD), min_size=1,
                                                              max_size=3))
def test_fuzzed_python_calls_return_or_raise_a_named_error(tmp_path, function, picks):
    import ctxpatch

    names = FACE[function]
    kwargs = {"spec": "gemma3"} if "spec" in names else {"target": "rank1_lemma"}
    for i, value in picks:
        kwargs[names[i % len(names)]] = value
    if function == "report":  # the valid formats render a whole report: only the argument checks are fuzzed
        kwargs["fmt"] = kwargs.get("fmt") if kwargs.get("fmt") not in FORMATS else "docx"
    if function == "prove" and kwargs["target"] == "all":
        kwargs["target"] = "every"
    base = tmp_path / f"ex{len(list(tmp_path.iterdir()))}"
    base.mkdir()
    with sandbox(base) as folders, within(EXAMPLE_SECONDS):
        if function == "report":
            kwargs["out_dir"] = folders["out"]
        try:
            getattr(ctxpatch, function)(**kwargs)
        except (CtxpatchInputError, PatchConditionError) as exc:
            assert str(exc), kwargs
    assert stray_files(folders) == []


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
