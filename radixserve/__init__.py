"""radixserve: an LLM serving engine built around a radix tree of token prefixes."""
# NOTE: first, before anything imports transformers: the checkout's root on sys.path would make our
# kernels/ folder shadow the PyPI package `kernels` (see radixserve/syspath.py).
from radixserve.syspath import drop_checkout_root

drop_checkout_root()

from radixserve.config import EngineConfig  # noqa: E402
from radixserve.outputs import RequestOutput, StreamDelta, TokenLogprob  # noqa: E402
from radixserve.sampling_params import SamplingParams  # noqa: E402

__all__ = ["Engine", "EngineConfig", "LLM", "RequestOutput", "SamplingParams", "StreamDelta", "TokenLogprob"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Engine and LLM pull in torch and the model code; import it only when asked for.
    if name == "Engine":
        from radixserve.engine.engine import Engine
        return Engine
    if name == "LLM":  # vLLM's offline API over an Engine (radixserve/offline/)
        from radixserve.offline.llm import LLM
        return LLM
    raise AttributeError(f"module 'radixserve' has no attribute {name!r}")
