"""Sampling on the device (penalties, filters, counter-based random draws), logprobs, stop checks."""
from radixserve.sampling.logprobs import prompt_logprobs, raw_logprobs, to_token_logprobs
from radixserve.sampling.sampler import SampleResult, filtered_logits, penalized_logits, processed_probs, sample
from radixserve.sampling.stop import StopChecker, StopStringBuffer, StopText, TextUpdate
from radixserve.sampling.tensors import SamplingRow, SamplingTensors, build_sampling_tensors

__all__ = [
    "SampleResult", "SamplingRow", "SamplingTensors", "StopChecker", "StopStringBuffer", "StopText",
    "TextUpdate", "build_sampling_tensors", "filtered_logits", "penalized_logits", "processed_probs",
    "prompt_logprobs", "raw_logprobs", "sample", "to_token_logprobs",
]
