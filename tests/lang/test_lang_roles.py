"""radixserve.lang without a model: role markers cut from chat templates (checked against the
template's own rendering of whole conversations), the choices methods on hand-computed numbers,
and the argument checks that raise at the call."""
from __future__ import annotations

import jinja2
import pytest

import radixserve.lang as sgl
from radixserve.lang import ir
from radixserve.lang.choices import METHODS, resolve
from radixserve.lang.roles import derive_role_markers

CHATML = ("{% for m in messages %}{% if loop.first and m['role'] != 'system' %}<|im_start|>system\nYou are "
          "Qwen, a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
          "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
          "{{ m['content'] | trim }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
          "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
# no system role: the template raises on one (as Gemma's and older Mistral templates do)
NO_SYSTEM = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}"
             "{{ raise_exception('System role not supported') }}{% endif %}"
             "{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]{% else %}{{ m['content'] }}</s>{% endif %}"
             "{% endfor %}")


class TemplateTokenizer:
    """Just enough of a HF tokenizer to render a chat template: jinja2, as transformers does."""

    def __init__(self, template: str, bos: str = "", adds_bos: bool = False) -> None:
        env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)

        def raise_exception(message):
            raise jinja2.TemplateError(message)
        env.globals["raise_exception"] = raise_exception
        self.chat_template, self._tpl = template, env.from_string(template)
        self.bos_token, self.bos_token_id, self._adds_bos = bos or None, (1 if bos else None), adds_bos

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        assert not tokenize
        return self._tpl.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                bos_token=self.bos_token or "")

    def encode(self, text, add_special_tokens=True):
        return [1] if add_special_tokens and self._adds_bos else []


CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Name a river"},
                {"role": "assistant", "content": "The Danube."}]


def _from_markers(markers, messages, bos: str = "") -> str:
    text = bos + ("" if messages[0]["role"] == "system" else markers.conversation_start)
    for m in messages:
        text += markers.begin[m["role"]] + m["content"] + markers.end[m["role"]]
    return text


@pytest.mark.parametrize("template,bos,adds_bos", [(CHATML, "", False), (LLAMA3, "<|begin_of_text|>", True),
                                                   (LLAMA3, "<|begin_of_text|>", False)])
def test_markers_rebuild_the_templates_rendering(template, bos, adds_bos):
    tok = TemplateTokenizer(template, bos, adds_bos)
    m = derive_role_markers(tok)
    # a tokenizer that adds the BOS itself: the markers leave it out (the state starts with it)
    lead = bos if adds_bos else ""
    assert lead + _from_markers(m, CONVERSATION) == tok.apply_chat_template(CONVERSATION)
    no_system = CONVERSATION[1:]
    assert lead + _from_markers(m, no_system) == tok.apply_chat_template(no_system)
    assert lead + _from_markers(m, no_system[:1]) + m.begin["assistant"] == tok.apply_chat_template(
        no_system[:1], add_generation_prompt=True)


def test_chatml_markers_and_default_system_prompt():
    m = derive_role_markers(TemplateTokenizer(CHATML))
    assert m.begin == {"system": "<|im_start|>system\n", "user": "<|im_start|>user\n",
                       "assistant": "<|im_start|>assistant\n"}
    assert set(m.end.values()) == {"<|im_end|>\n"}
    assert m.conversation_start == "<|im_start|>system\nYou are Qwen, a helpful assistant.<|im_end|>\n"


def test_template_without_system_role():
    tok = TemplateTokenizer(NO_SYSTEM, "<s>", adds_bos=True)
    m = derive_role_markers(tok)
    assert "system" not in m.begin and m.begin["user"] == "[INST] " and m.end["user"] == " [/INST]"
    assert m.begin["assistant"] == "" and m.end["assistant"] == "</s>" and m.conversation_start == ""
    convo = CONVERSATION[1:]
    assert "<s>" + _from_markers(m, convo) == tok.apply_chat_template(convo)


def test_no_chat_template_is_a_clear_error():
    class Plain:
        chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        derive_role_markers(Plain())


# ---- choices methods ----------------------------------------------------------------------------
def test_token_length_normalized_is_the_mean():
    d = METHODS["token_length_normalized"].decide([[-1.0, -3.0], [-2.5], [-1.0, -1.0, -4.5]], None)
    assert d.index == 0 and d.scores == [-2.0, -2.5, -2.1666666666666665]


def test_greedy_token_selection_pads_short_choices_with_their_mean():
    # position 0: choices 0 and 1 tie at -0.5; position 1: choice 1 is padded with its mean (-0.5) and wins
    d = METHODS["greedy_token_selection"].decide([[-0.5, -2.0, -0.1], [-0.5], [-3.0, 0.0]], None)
    assert d.index == 1
    # the mean alone would pick choice 1 too; this one the greedy rule decides at position 0 against the mean
    d = METHODS["greedy_token_selection"].decide([[-0.1, -9.0], [-0.2, -0.2]], None)
    assert d.index == 0 and METHODS["token_length_normalized"].decide([[-0.1, -9.0], [-0.2, -0.2]], None).index == 1


def test_unconditional_likelihood_normalized_subtracts_the_prior():
    cond = [[-1.0, -1.0], [-0.5, -0.5]]
    uncond = [[0.0, -5.0], [0.0, -0.5]]  # choice 0 is unlikely on its own: the context explains it
    d = METHODS["unconditional_likelihood_normalized"].decide(cond, uncond)
    assert d.index == 0 and d.scores == [1.5, -0.25]
    with pytest.raises(ValueError, match="unconditional"):
        METHODS["unconditional_likelihood_normalized"].decide(cond, None)


def test_ties_go_to_the_first_choice():
    for m in METHODS.values():
        assert m.decide([[-1.0], [-1.0]], [[0.0], [0.0]]).index == 0


def test_resolve_methods_by_object_or_name():
    assert resolve("greedy_token_selection") is sgl.greedy_token_selection
    assert resolve(sgl.unconditional_likelihood_normalized).needs_unconditional
    with pytest.raises(ValueError, match="unknown choices_method 'best'"):
        resolve("best")


# ---- bad arguments raise at the call ------------------------------------------------------------
def test_bad_arguments_raise_value_error_at_the_call():
    with pytest.raises(ValueError, match="unknown choices_method"):
        sgl.select("x", choices=["a", "b"], choices_method="most_likely")
    with pytest.raises(ValueError, match="non-empty list"):
        sgl.select("x", choices=[])
    with pytest.raises(ValueError, match="non-empty strings"):
        sgl.select("x", choices=["a", ""])
    with pytest.raises(ValueError, match="distinct"):
        sgl.select("x", choices=["a", "a"])
    with pytest.raises(ValueError, match="temperature must be 0"):
        sgl.select("x", choices=["a", "b"], temperature=0.7)
    with pytest.raises(ValueError, match="at most one of .*json_schema and regex"):
        sgl.gen("x", regex=r"\d+", json_schema={"type": "object"})
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 0"):
        sgl.gen("x", max_tokens=-1)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        sgl.gen("x", temperature=-1.0)
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        sgl.gen("")
    with pytest.raises(ValueError, match="strings and expressions"):
        sgl.user(42)


def test_gen_records_where_it_was_written():
    g = sgl.gen("answer", max_tokens=4)
    assert g.site.function == "test_gen_records_where_it_was_written"
    assert g.site.filename == __file__ and g.describe() == "gen('answer')"
    assert str(g.site).startswith("test_gen_records_where_it_was_written (test_lang_roles.py:")


def test_expressions_concatenate_with_strings():
    e = "Q: " + sgl.gen("a") + "\nA:" + sgl.user("hi")
    kinds = [type(x).__name__ for x in ir.walk(e)]
    assert kinds == ["Text", "Gen", "Text", "RoleBegin", "Text", "RoleEnd"]


# ---- what a gen appends ---------------------------------------------------------------------------
class _TokBackend:
    """encode/decode of the embedded tokenizer, as Backend has them."""

    def __init__(self):
        from radixserve.models.loader import embedded_model_path
        from radixserve.models.tokenizer import load_tokenizer

        self.tok = load_tokenizer(embedded_model_path())
        self.special_ids = frozenset(self.tok.all_special_ids)

    def encode(self, text):
        return self.tok.encode(text, add_special_tokens=False) if text else []

    def decode(self, ids, skip=True):
        return self.tok.decode(ids, skip_special_tokens=skip)


def test_gen_tokens_drops_the_stop_token_and_retokenises_a_cut_tail():
    from radixserve.lang.backend.base import GenOutput
    from radixserve.lang.tokens import gen_tokens
    from radixserve.sampling_params import SamplingParams

    be = _TokBackend()
    prompt = be.encode("Say something:")
    said = be.encode(" Hello there, friend")
    eos = be.tok.eos_token_id
    # stopped by EOS: every model token kept, the EOS dropped
    out = GenOutput(said + [eos], " Hello there, friend", "stop", len(prompt), 0)
    assert gen_tokens(be, prompt, out, SamplingParams()) == (said, len(said))
    # a stop string cut " friend" after " fr": the model's tokens before it stay, " fr" is tokenised anew
    out = GenOutput(said, " Hello there, fr", "stop", len(prompt), 0)
    ids, kept = gen_tokens(be, prompt, out, SamplingParams(stop=["iend"]))
    assert ids[:kept] == said[:kept] and be.decode(ids) == " Hello there, fr"
    assert kept == len(be.encode(" Hello there,")) and ids[kept:] == be.encode(" fr")
