"""Engine configuration: one frozen dataclass, validated at construction."""
from __future__ import annotations

from dataclasses import dataclass

POLICIES = ("fcfs", "lpm", "dfs-weight")
DTYPES = ("auto", "float32", "bfloat16", "float16")
ATTENTION_BACKENDS = ("auto", "torch", "torch-ref", "triton")
# fp8 / int4: quantize a float checkpoint or dummy weights at load; gptq / awq / compressed-tensors: assert the
# checkpoint's own method (detected from its quantization_config without the option). Kept in step with
# radixserve.models.quant_config.QUANTIZATIONS (a test checks).
QUANTIZATIONS = ("fp8", "int4", "gptq", "awq", "compressed-tensors")
SPECULATIVE_METHODS = ("ngram", "radix")


@dataclass(frozen=True)
class SpeculativeConfig:
    """Speculative decoding (vLLM's `speculative_config` shape): draft up to `num_speculative_tokens`
    tokens per decoding request, verify them in one forward, keep the agreed prefix plus one token.

    method "ngram": prompt lookup, the tokens that followed the latest earlier occurrence of the
    request's last n tokens (n from prompt_lookup_max down to prompt_lookup_min) in its own prompt and
    output; "radix": the continuation the radix tree already holds after the request's tokens (a
    regenerated answer, a program run again), else prompt lookup.
    """

    method: str = "ngram"
    num_speculative_tokens: int = 4  # most draft tokens per request per step (its draft length adapts below it)
    prompt_lookup_min: int = 2
    prompt_lookup_max: int = 4
    # no drafts while more requests than this decode together: a verify step computes (1 + k) tokens per
    # request, which pays while decode is bound by reading the weights, not at large batches
    max_batch: int = 32

    def __post_init__(self) -> None:
        if self.method not in SPECULATIVE_METHODS:
            raise ValueError(f"speculative_config.method must be one of {SPECULATIVE_METHODS}, got {self.method!r}")
        if not 1 <= self.num_speculative_tokens <= 16:
            raise ValueError(f"speculative_config.num_speculative_tokens must be in [1, 16], got {self.num_speculative_tokens}")
        if not 1 <= self.prompt_lookup_min <= self.prompt_lookup_max:
            raise ValueError("speculative_config needs 1 <= prompt_lookup_min <= prompt_lookup_max, got "
                             f"{self.prompt_lookup_min} and {self.prompt_lookup_max}")
        if self.max_batch < 1:
            raise ValueError(f"speculative_config.max_batch must be >= 1, got {self.max_batch}")

    @classmethod
    def parse(cls, value: "SpeculativeConfig | dict | None") -> "SpeculativeConfig | None":
        """From a dict (the JSON of --speculative-config); unknown keys are an error that names them."""
        if value is None or isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"speculative_config must be a dict like {{'method': 'ngram', 'num_speculative_tokens': 4}}, "
                             f"got {type(value).__name__}")
        unknown = set(value) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"speculative_config: unknown keys {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**value)


@dataclass(frozen=True)
class EngineConfig:
    model: str | None = None  # None = embedded SmolLM2-135M-Instruct (GGUF); "dummy:<config path or name>"
    tokenizer: str | None = None  # defaults to the model's own
    dtype: str = "auto"  # auto = float32 on CPU, bfloat16 on CUDA
    device: str = "auto"  # auto = cuda if available else cpu
    seed: int = 0  # for dummy weights and unseeded requests
    page_size: int = 1
    max_total_tokens: int | None = None  # KV pool capacity in tokens (None: sized from memory)
    kv_memory_fraction: float = 0.85  # of free GPU memory after weights, when max_total_tokens is None
    max_running_requests: int = 256
    max_prefill_tokens: int = 8192  # tokens computed per step across prefill chunks
    chunked_prefill_size: int = 2048  # longest prefill chunk of one request per step
    # while requests decode, prefill chunks are sized (by a step cost model fitted to measured steps) so that
    # a step takes about this long; None: off (every step may carry full chunks). Alone, a prompt prefills in full chunks.
    max_step_ms: float | None = None
    step_cost_online: bool = True  # refine the step cost model from measured step times (False: its prior only)
    schedule_policy: str = "lpm"
    aging_tokens_per_step: float = 8.0  # a waiting request's priority gains this many tokens per step waited
    disable_radix_cache: bool = False
    max_context_len: int | None = None  # defaults to the model's max_position_embeddings
    max_queued_requests: int = 4096
    attention_backend: str = "auto"  # auto (triton on CUDA, torch elsewhere) | torch | torch-ref | triton
    cuda_graph: bool = True
    overlap_schedule: bool = True  # schedule step N+1 while the device runs step N
    check_integrity: bool = False  # run the tree's integrity check every idle step (tests)
    grammar_compile_timeout_s: float = 30.0  # a structured-output request whose grammar compiles longer is refused
    grammar_compile_threads: int = 4  # threads compiling grammars (never the scheduler's)
    # structured output: append text the grammar forces (6+ tokens) without decoding it. Off by default:
    # a jump turns its row into an extend step, which takes the whole batch off the CUDA-graph decode
    # path; it pays for long fixed keys at modest batch (1.9x end to end, H100) and costs at high
    # batch on schemas with short forced runs (0.34x at batch 64-256): benchmarks/results/grammar_gpu_h100.md
    jump_forward: bool = False
    # cascade attention: decode rows sharing a cached prefix of at least cascade_min_prefix_len tokens,
    # at least cascade_min_group_size of them, attend to it once for the whole group
    cascade_attention: bool = True
    cascade_min_prefix_len: int = 32
    cascade_min_group_size: int = 2
    tp: int = 1  # tensor parallelism: ranks the model is split over (one process and device each)
    fused_ops: bool = True  # fused elementwise ops (RMSNorm + residual, rotary, SiLU*mul): Triton on CUDA, CPU ops on CPU
    # weights: None = as the checkpoint has them (its quantization_config, if any); fp8 (per-channel weights, per-token
    # dynamic activations) or int4 (round-to-nearest, group 128) quantize at load; see QUANTIZATIONS
    quantization: str | None = None
    # speculative decoding (greedy requests; see SpeculativeConfig); a dict is parsed. None: off
    speculative_config: SpeculativeConfig | None = None
    # a folder for the radix cache's snapshot: restored at start when its fingerprint matches, saved at
    # shutdown (and on POST /cache/save); None: the cache lives and dies with the process
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "speculative_config", SpeculativeConfig.parse(self.speculative_config))
        if self.page_size < 1 or self.page_size & (self.page_size - 1):
            raise ValueError(f"page_size must be a power of two >= 1, got {self.page_size}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.schedule_policy not in POLICIES:
            raise ValueError(f"schedule_policy must be one of {POLICIES}, got {self.schedule_policy!r}")
        if self.max_total_tokens is not None and self.max_total_tokens < 2 * self.page_size:
            raise ValueError(f"max_total_tokens must be at least two pages, got {self.max_total_tokens}")
        if not 0 < self.kv_memory_fraction < 1:
            raise ValueError(f"kv_memory_fraction must be in (0, 1), got {self.kv_memory_fraction}")
        for name in ("tp", "max_running_requests", "max_prefill_tokens", "chunked_prefill_size", "max_queued_requests",
                     "cascade_min_prefix_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_step_ms is not None and not (0 < self.max_step_ms < float("inf")):
            raise ValueError(f"max_step_ms must be a positive number of milliseconds (or None: off), got {self.max_step_ms}")
        if self.cascade_min_group_size < 2:
            raise ValueError(f"cascade_min_group_size must be >= 2 (a group shares a prefix), got {self.cascade_min_group_size}")
        if self.aging_tokens_per_step < 0:
            raise ValueError(f"aging_tokens_per_step must be >= 0, got {self.aging_tokens_per_step}")
        if not self.grammar_compile_timeout_s > 0:
            raise ValueError(f"grammar_compile_timeout_s must be > 0, got {self.grammar_compile_timeout_s}")
        if self.grammar_compile_threads < 1:
            raise ValueError(f"grammar_compile_threads must be >= 1, got {self.grammar_compile_threads}")
        if self.quantization is not None and self.quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {QUANTIZATIONS} (or None: as the checkpoint is), "
                             f"got {self.quantization!r}")
        if self.cache_dir is not None and self.tp > 1:
            raise ValueError("cache_dir (a snapshot of the radix cache) needs tp=1: each rank holds part of the K/V")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(f"attention_backend must be one of {ATTENTION_BACKENDS}, got {self.attention_backend!r}")
