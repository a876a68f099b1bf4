"""Hugging Face Hub model ids: `--model HuggingFaceTB/SmolLM2-360M-Instruct` as well as a path.

A string that is not an existing path and looks like `org/name` (a safetensors checkpoint) or
`org/name/file.gguf` (one GGUF file of a repository) is fetched with
`huggingface_hub.snapshot_download` into the Hub's own cache (HF_HUB_CACHE, shared with
transformers and every other Hub client): downloaded when online, read from the cache alone when
offline (HF_HUB_OFFLINE=1, or no network). Only what we load is fetched: configs, tokenizer files,
safetensors (or the one GGUF file). Neither works: one ValueError line naming the id.
"""
from __future__ import annotations

import logging
import os
import re

logger = logging.getLogger(__name__)

_REPO = r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*"
_HUB_ID = re.compile(rf"^(?P<repo>{_REPO})(?:/(?P<file>[^/]+\.gguf))?$")
# what load_model and load_tokenizer read from a HF checkpoint
CHECKPOINT_FILES = ["*.json", "*.safetensors", "tokenizer.model", "*.tiktoken", "merges.txt", "vocab.txt"]


def looks_like_hub_id(model: str) -> bool:
    """`org/name` or `org/name/file.gguf`, and not a path on this machine."""
    return not os.path.exists(model) and not model.startswith((".", "/", "~")) and _HUB_ID.match(model) is not None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "on", "yes", "true")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def resolve_model(model: str | None) -> str | None:
    """`model` as a local path: a Hub id becomes its snapshot folder (or GGUF file) in the Hub
    cache; anything else (None, a path, dummy:..., a missing path) is returned unchanged."""
    if model is None or model.startswith("dummy:") or not looks_like_hub_id(model):
        return model
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE

    m = _HUB_ID.match(model)
    repo, file = m.group("repo"), m.group("file")
    patterns = [file] if file else CHECKPOINT_FILES
    errors = []
    for local_only in ((True,) if _offline() else (False, True)):
        try:
            folder = snapshot_download(repo, allow_patterns=patterns, local_files_only=local_only)
        except Exception as exc:  # noqa: BLE001 - network, missing repo, gated repo, not cached: said below
            errors.append(_first_line(exc))
            continue
        path = os.path.join(folder, file) if file else folder
        if file and not os.path.isfile(path) or not file and not os.path.isfile(os.path.join(path, "config.json")):
            errors.append(f"the snapshot has no {file or 'config.json'}")
            continue
        logger.info("model %s: %s", model, path)
        return path
    where = "in the local Hugging Face cache" if _offline() else "on the Hugging Face Hub or in the local cache"
    raise ValueError(f"model {model!r} is not a local path and was not found {where} ({HF_HUB_CACHE}): "
                     f"{errors[-1]}; check the id, or download it while online")


def check_model(model: str | None) -> None:
    """Fail at once, in one line, on a model that names nothing (before any process starts): not
    None, not dummy:, not an existing path, not shaped like a Hub id. (A Hub id is resolved when the
    model loads, after the port is bound: it may download.)"""
    if model is None or model.startswith("dummy:") or os.path.exists(model) or looks_like_hub_id(model):
        return
    raise ValueError(f"model path {model} does not exist; pass a HF model directory, a .gguf file, a Hub id "
                     "(org/name), dummy:<name>, or no --model for the embedded model")
