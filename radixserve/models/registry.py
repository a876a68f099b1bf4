"""Maps HF `architectures` names to radixserve model classes."""
from __future__ import annotations

from torch import nn

from radixserve.models.llama import LlamaForCausalLM
from radixserve.models.mixtral import MixtralForCausalLM
from radixserve.models.qwen2 import Qwen2ForCausalLM
from radixserve.models.qwen2_moe import Qwen2MoeForCausalLM
from radixserve.models.qwen3 import Qwen3ForCausalLM
from radixserve.models.qwen3_moe import Qwen3MoeForCausalLM

MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "MixtralForCausalLM": MixtralForCausalLM,
    "Qwen2ForCausalLM": Qwen2ForCausalLM,
    "Qwen2MoeForCausalLM": Qwen2MoeForCausalLM,
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
    "Qwen3MoeForCausalLM": Qwen3MoeForCausalLM,
}


def model_class(config) -> type[nn.Module]:
    """The class for `config.architectures`; ValueError naming the supported ones otherwise."""
    archs = list(getattr(config, "architectures", None) or [])
    for arch in archs:
        if arch in MODEL_CLASSES:
            return MODEL_CLASSES[arch]
    raise ValueError(f"unsupported model architecture {archs or '(none in config)'}; "
                     f"radixserve supports {', '.join(sorted(MODEL_CLASSES))}")
