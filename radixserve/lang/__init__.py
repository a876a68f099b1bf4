"""radixserve.lang: LLM programs in plain Python, with SGLang's frontend surface.

    import radixserve.lang as sgl

    @sgl.function
    def qa(s, question):
        s += sgl.user(question)
        s += sgl.assistant(sgl.gen("answer", max_tokens=32))

    state = qa.run(question="...", backend=sgl.LocalBackend(), temperature=0)
    state["answer"], state.meta("answer")["cached_tokens"]

A program's state holds token ids; each gen/select continues from the exact tokens already
computed, so every call after the first finds its prefix in the radix tree.
"""
from radixserve.lang.backend import Backend, EndpointError, LocalBackend, RuntimeEndpoint
from radixserve.lang.choices import (ChoicesMethod, greedy_token_selection, token_length_normalized,
                                     unconditional_likelihood_normalized)
from radixserve.lang.ir import (assistant, assistant_begin, assistant_end, gen, select, system, system_begin,
                                system_end, user, user_begin, user_end)
from radixserve.lang.program import Function, function, get_default_backend, set_default_backend
from radixserve.lang.run import ProgramError
from radixserve.lang.state import ForkGroup, ProgramState

__all__ = [
    "Backend", "ChoicesMethod", "EndpointError", "ForkGroup", "Function", "LocalBackend", "ProgramError",
    "ProgramState", "RuntimeEndpoint", "assistant", "assistant_begin", "assistant_end", "function",
    "gen", "get_default_backend", "greedy_token_selection", "select", "set_default_backend", "system",
    "system_begin", "system_end", "token_length_normalized", "unconditional_likelihood_normalized", "user",
    "user_begin", "user_end",
]
