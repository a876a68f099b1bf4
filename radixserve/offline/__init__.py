"""vLLM's offline API (`LLM`, `generate`, `chat`) as a thin layer over radixserve's Engine."""
from radixserve.offline.llm import LLM
from radixserve.offline.outputs import CompletionOutput, LLMOutput, Logprob

__all__ = ["LLM", "LLMOutput", "CompletionOutput", "Logprob"]
