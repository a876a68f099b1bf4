"""radixserve: an LLM serving engine built around a radix tree of token prefixes."""
from radixserve.config import EngineConfig
from radixserve.outputs import RequestOutput, StreamDelta, TokenLogprob
from radixserve.sampling_params import SamplingParams

__all__ = ["Engine", "EngineConfig", "RequestOutput", "SamplingParams", "StreamDelta", "TokenLogprob"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Engine pulls in torch and the model code; import it only when asked for.
    if name == "Engine":
        from radixserve.engine.engine import Engine
        return Engine
    raise AttributeError(f"module 'radixserve' has no attribute {name!r}")
