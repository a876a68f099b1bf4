"""Tokenizer loading: HF directories (local files only) and GGUF files (converted once, then cached)."""
from __future__ import annotations

import logging
import os
import shutil
import tempfile

from transformers import AutoTokenizer, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


def cache_dir() -> str:
    """radixserve's cache root: $RADIXSERVE_CACHE_DIR, else ~/.cache/radixserve."""
    return os.environ.get("RADIXSERVE_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "radixserve")


def _gguf_cache_path(gguf_path: str) -> str:
    stat = os.stat(gguf_path)
    name = os.path.basename(gguf_path).removesuffix(".gguf")
    return os.path.join(cache_dir(), "tokenizers", f"{name}-{stat.st_size}-{int(stat.st_mtime)}")


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """Tokenizer from a HF model directory, a .gguf file, or a Hub id (fetched into, or read from, the
    Hub cache: models/hub.py)."""
    from radixserve.models.hub import resolve_model

    path = resolve_model(path)
    if not os.path.exists(path):
        raise ValueError(f"tokenizer path {path} does not exist; pass a HF model directory or a .gguf file")
    if path.endswith(".gguf"):
        return _gguf_tokenizer(path)
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ValueError(f"could not load a tokenizer from {path} ({exc}); the directory needs tokenizer files "
                         "(tokenizer.json or tokenizer.model + tokenizer_config.json), or pass tokenizer=...") from exc


def _gguf_tokenizer(gguf_path: str) -> PreTrainedTokenizerBase:
    """Converting a GGUF vocabulary takes seconds, so the result is saved and reused."""
    cached = _gguf_cache_path(gguf_path)
    if os.path.isdir(cached):
        try:
            return AutoTokenizer.from_pretrained(cached, local_files_only=True)
        except (OSError, ValueError) as exc:
            logger.warning("cached tokenizer at %s is unreadable (%s); rebuilding it", cached, exc)
            shutil.rmtree(cached, ignore_errors=True)
    logger.info("converting the tokenizer of %s (once; cached under %s)", gguf_path, cached)
    try:
        tokenizer = AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(gguf_path)),
                                                  gguf_file=os.path.basename(gguf_path), local_files_only=True)
    except Exception as exc:  # the GGUF parser raises many kinds of errors on bad files
        raise ValueError(f"could not read a tokenizer from {gguf_path} ({type(exc).__name__}: {exc}); "
                         "the file may be corrupt; pass tokenizer=<HF directory>") from exc
    tmp = None
    try:
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        tmp = tempfile.mkdtemp(dir=os.path.dirname(cached))
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, cached)  # atomic publish; a concurrent writer's copy is equally good
    except OSError as exc:
        logger.warning("could not cache the tokenizer under %s: %s", cached, exc)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return tokenizer
