"""What /api/tags, /api/show and /api/ps say about the served model, read from its files.

Only what is known is reported (a field we cannot know is left out, never guessed):
- a GGUF file (the embedded model included): family (general.architecture), parameter count
  (summed over the tensors), quantization level (general.file_type), format "gguf", size in bytes;
- a HF directory: family (config.json's model_type), quantization (its quantization_config's
  method, or the engine's load-time quantization), format "safetensors", size (its .safetensors);
- dummy weights: format "dummy" and nothing else.
Read once per app, off the event loop (a GGUF header read takes a moment).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from radixserve.engine.interface import EngineHandle


@dataclass(frozen=True)
class ModelFacts:
    format: str
    size: int | None = None  # bytes of weights on disk
    modified_at: str | None = None  # RFC 3339, the weights' mtime
    family: str | None = None
    parameter_count: int | None = None
    quantization_level: str | None = None
    extra_info: dict[str, Any] = field(default_factory=dict)  # for /api/show's model_info

    def details(self) -> dict[str, Any]:
        d: dict[str, Any] = {"parent_model": "", "format": self.format}
        if self.family is not None:
            d["family"] = self.family
            d["families"] = [self.family]
        if self.parameter_count is not None:
            d["parameter_size"] = human_count(self.parameter_count)
        if self.quantization_level is not None:
            d["quantization_level"] = self.quantization_level
        return d


def human_count(n: int) -> str:
    """134515008 -> '134.52M', as Ollama prints parameter sizes."""
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.2f}".rstrip("0").rstrip(".") + unit
    return str(n)


def _mtime(path: str) -> str:
    return datetime.fromtimestamp(os.path.getmtime(path), timezone.utc).isoformat().replace("+00:00", "Z")


def read_facts(engine: EngineHandle) -> ModelFacts:
    model = engine.config.model
    if model is None or (model.endswith(".gguf") and os.path.isfile(model)):
        from radixserve.models.loader import embedded_model_path

        return _gguf(embedded_model_path() if model is None else model)
    if model.startswith("dummy:"):
        return ModelFacts(format="dummy")
    if os.path.isdir(model):
        return _hf_dir(model, engine.config.quantization)
    return ModelFacts(format="unknown")


def _gguf(path: str) -> ModelFacts:
    import gguf

    from radixserve.models.gguf_file import open_gguf

    reader = open_gguf(path)

    def meta(key: str) -> Any:
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    file_type = meta("general.file_type")
    quant = None
    if file_type is not None:
        try:
            quant = gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            quant = None
    params = sum(int(t.n_elements) for t in reader.tensors)
    return ModelFacts(format="gguf", size=os.path.getsize(path), modified_at=_mtime(path),
                      family=meta("general.architecture"), parameter_count=params, quantization_level=quant,
                      extra_info={k: meta(k) for k in ("general.basename", "general.size_label")
                                  if meta(k) is not None})


def _hf_dir(path: str, load_quant: str | None) -> ModelFacts:
    config: dict[str, Any] = {}
    cfg_path = os.path.join(path, "config.json")
    if os.path.isfile(cfg_path):
        with open(cfg_path, encoding="utf-8") as f:
            config = json.load(f)
    files = [os.path.join(path, n) for n in os.listdir(path) if n.endswith(".safetensors")]
    qc = config.get("quantization_config") or {}
    quant = qc.get("quant_method") if isinstance(qc, dict) else None
    return ModelFacts(format="safetensors", size=sum(os.path.getsize(f) for f in files) if files else None,
                      modified_at=_mtime(cfg_path) if os.path.isfile(cfg_path) else None,
                      family=config.get("model_type"), quantization_level=quant or load_quant)
