"""GrammarBackend: one per engine. Checks grammar sources, compiles them in a thread pool with
xgrammar's GrammarCompiler (and its cache), and holds the batch matcher that fills bitmasks."""
from __future__ import annotations

import json
import re
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Sequence

from radixserve.grammar.errors import GrammarError
from radixserve.grammar.schema_check import check_schema
from radixserve.grammar.spec import GrammarSpec

# NOTE: JSON is generated on one line with ", " and ": " separators. Free whitespace stops
# jump-forward at every separator (it follows only a unique continuation) and lets small models
# loop on whitespace until max_new_tokens; capping it (max_whitespace_cnt) makes xgrammar check
# the count at run time (mask p99 ~100x slower on the test schemas). The price: a model that
# would rather pretty-print its JSON is held to one line.
JSON_ANY_WHITESPACE = False
_XGR_PREFIX = re.compile(r"^\[[\d:.]+\] \S+:\d+: ")
# NOTE: checking a JSON schema against its meta-schema costs milliseconds (tens on a slow core) on the
# caller's thread, holding the GIL the scheduler thread needs; structured-output traffic repeats a
# few schemas, so sources that passed are remembered (by kind and exact text) and pass at once.
VALIDATED_CACHE_SIZE = 1024
# NOTE: jump-forward tokenises the text a grammar forces (mostly the same few keys and separators) on
# the scheduler thread, once per constrained row and step: a tokenizer call costs tens of
# microseconds, a dictionary hit well under one.
FORCED_TEXT_CACHE_SIZE = 4096


def _xgrammar():
    try:
        import xgrammar
    except ImportError as exc:
        raise ValueError("structured output needs the xgrammar package: pip install 'radixserve[grammar]'") from exc
    return xgrammar


def _message(exc: BaseException) -> str:
    """xgrammar's error text without its log prefix (time, C++ file and line)."""
    text = str(exc).strip()
    lines = [_XGR_PREFIX.sub("", ln).strip() for ln in text.splitlines() if ln.strip()]
    return "; ".join(lines) or type(exc).__name__


class GrammarStats:
    """Counters for Engine.stats(); compile counters are written by pool threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.compiled = 0
        self.compile_failed = 0
        self.compile_s = 0.0
        self.mask_rows = 0  # bitmask rows filled (one per constrained request per sampled token)
        self.mask_fill_s = 0.0
        self.jump_forward_tokens = 0  # output tokens appended without a decode step
        self.jump_forwards = 0

    def on_compile(self, seconds: float, ok: bool) -> None:
        with self._lock:
            self.compiled += ok
            self.compile_failed += not ok
            self.compile_s += seconds

    def snapshot(self) -> dict:
        with self._lock:
            return {"grammar_compiled": self.compiled, "grammar_compile_failed": self.compile_failed,
                    "grammar_compile_s": self.compile_s, "grammar_mask_rows": self.mask_rows,
                    "grammar_mask_fill_s": self.mask_fill_s, "jump_forward_tokens": self.jump_forward_tokens,
                    "jump_forwards": self.jump_forwards}


class GrammarBackend:
    def __init__(self, tokenizer, vocab_size: int, stop_token_ids: Sequence[int], threads: int,
                 timeout_s: float) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.stop_token_ids = sorted(stop_token_ids)
        self.timeout_s = timeout_s
        self.stats = GrammarStats()
        self._threads = threads
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        # xgrammar.GrammarCompiler per vocabulary view (see build_tokenizer_info), built on first use
        self._compilers: dict[bool, object] = {}
        self._batch_matcher = None
        self._closed = False
        self._validated: OrderedDict[tuple[str, str], None] = OrderedDict()  # LRU of sources that passed
        self._forced: OrderedDict[str, tuple[int, ...]] = OrderedDict()  # LRU of encode_forced; loop thread only

    # ---- checks (synchronous, cheap: no token-level compilation) ----------------------------------
    def validate(self, spec: GrammarSpec) -> None:
        """Raise GrammarError (a ValueError) if the source is not a grammar we can enforce. A source
        that passed before passes at once (the check depends on the source text only)."""
        key = (spec.kind, spec.source)
        with self._lock:
            if key in self._validated:
                self._validated.move_to_end(key)
                return
        self._check(spec)
        with self._lock:
            self._validated[key] = None
            while len(self._validated) > VALIDATED_CACHE_SIZE:
                self._validated.popitem(last=False)

    def _check(self, spec: GrammarSpec) -> None:
        xgr = _xgrammar()
        try:
            if spec.kind == "json_schema":
                schema = json.loads(spec.source)
                _check_json_schema(schema)
                xgr.Grammar.from_json_schema(spec.source, any_whitespace=JSON_ANY_WHITESPACE, strict_mode=True)
            elif spec.kind == "regex":
                xgr.Grammar.from_regex(spec.source)
            elif spec.kind == "ebnf":
                xgr.Grammar.from_ebnf(spec.source)
            elif spec.kind == "structural_tag":
                xgr.Grammar.from_structural_tag(spec.source)
            else:
                raise AssertionError(f"unknown grammar kind {spec.kind!r}")
        except GrammarError:
            raise
        except ValueError as exc:  # ours: the schema checks
            raise GrammarError(spec.field, str(exc)) from None
        except Exception as exc:  # xgrammar raises RuntimeError and its own error classes
            raise GrammarError(spec.field, f"{spec.field} is not valid: {_message(exc)}") from None

    # ---- compilation (thread pool) ----------------------------------------------------------------
    def compile(self, spec: GrammarSpec) -> Future:
        """Start compiling; the future holds an xgrammar CompiledGrammar or the compiler's error."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the grammar backend is shut down")
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="radixserve-grammar")
            return self._pool.submit(self._compile, spec)

    def wait(self, future: Future, spec: GrammarSpec, timeout_s: float | None) -> None:
        """Block until compiled; GrammarError on failure or timeout."""
        from concurrent.futures import TimeoutError as FutureTimeout

        try:
            future.result(timeout=timeout_s)
        except FutureTimeout:
            raise self.timeout_error(spec) from None
        except Exception as exc:  # noqa: BLE001 - the compiler's error, for the caller
            raise self.failure_error(spec, exc) from None

    def timeout_error(self, spec: GrammarSpec) -> GrammarError:
        return GrammarError(spec.field, f"{spec.field}: the grammar did not compile within {self.timeout_s:g} s "
                                        "(grammar_compile_timeout_s); simplify it")

    def failure_error(self, spec: GrammarSpec, exc: BaseException) -> GrammarError:
        if isinstance(exc, ValueError) and exc.args:  # already says what to do (e.g. install xgrammar)
            return GrammarError(spec.field, str(exc.args[0]))
        return GrammarError(spec.field, f"{spec.field} could not be compiled: {_message(exc)}")

    def _compile(self, spec: GrammarSpec):
        t0 = time.perf_counter()
        ok = False
        try:
            compiler = self.compiler(json_only=spec.kind == "json_schema")
            if spec.kind == "json_schema":
                out = compiler.compile_json_schema(spec.source, any_whitespace=JSON_ANY_WHITESPACE, strict_mode=True)
            elif spec.kind == "regex":
                out = compiler.compile_regex(spec.source)
            elif spec.kind == "ebnf":
                out = compiler.compile_grammar(spec.source)
            else:
                out = compiler.compile_structural_tag(spec.source)
            ok = True
            return out
        finally:
            self.stats.on_compile(time.perf_counter() - t0, ok)

    def compiler(self, json_only: bool = False):
        """xgrammar's GrammarCompiler for this tokenizer (built once per view, thread-safe); `json_only`:
        the view for JSON schemas, without tokens holding raw control characters."""
        with self._lock:
            if json_only not in self._compilers:
                from radixserve.grammar.tokenizer_info import build_tokenizer_info

                xgr = _xgrammar()
                info = build_tokenizer_info(self.tokenizer, self.vocab_size, self.stop_token_ids, json_only)
                self._compilers[json_only] = xgr.GrammarCompiler(info, max_threads=self._threads)
            return self._compilers[json_only]

    def batch_matcher(self):
        """xgrammar's BatchGrammarMatcher (fills many rows of a bitmask in parallel); loop thread only."""
        if self._batch_matcher is None:
            self._batch_matcher = _xgrammar().BatchGrammarMatcher()
        return self._batch_matcher

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def encode_forced(self, text: str) -> tuple[int, ...]:
        """encode(text), remembered (jump-forward text repeats); loop thread only."""
        ids = self._forced.get(text)
        if ids is None:
            ids = self._forced[text] = tuple(self.encode(text))
            while len(self._forced) > FORCED_TEXT_CACHE_SIZE:
                self._forced.popitem(last=False)
        else:
            self._forced.move_to_end(text)
        return ids

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


def _check_json_schema(schema) -> None:
    """The schema is valid JSON Schema (its own meta-schema) and uses only keywords we enforce."""
    try:
        from jsonschema import exceptions, validators
    except ImportError as exc:
        raise ValueError("json_schema needs the jsonschema package: pip install 'radixserve[grammar]'") from exc
    if not isinstance(schema, (dict, bool)):
        raise ValueError(f"json_schema must be a JSON object (or a boolean), got {type(schema).__name__}")
    cls = validators.validator_for(schema, default=validators.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except exceptions.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        raise ValueError(f"json_schema is not a valid JSON Schema: {exc.message}"
                         + (f" (at #/{where})" if where else "")) from None
    check_schema(schema)
