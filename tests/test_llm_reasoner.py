"""LLMReasoner: loading, prompt assembly, label masking, LoRA freezing and batched generation.

Runs on the `tiny_llm_dir` fixture (a 2-layer Llama saved with save_pretrained + the real
SmolLM2 tokenizer), so every test goes through the real `from_pretrained` path.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from minigpt4.common.modalities import IMAGE_TOKEN, VIDEO_PLACEHOLDER
from minigpt4.models.hero.llm_reasoner import IGNORE_INDEX, LLMReasoner, ReasonerConfig, resolve_dtype
from minigpt4.models.hero.user_turn import BRIEF_HEADER, compose_user_turn

Q = 4  # context vectors per clip in these tests


def make_reasoner(path, **overrides) -> LLMReasoner:
    llm = {"path": str(path), "dtype": "float32", "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0}
    model = {"max_txt_len": 32}
    for key, value in overrides.items():
        (model if key in ("max_txt_len", "system_prompt", "prompt_template", "use_chat_template", "end_sym") else llm)[key] = value
    model["llm"] = llm
    return LLMReasoner(ReasonerConfig.from_model_cfg(model))


@pytest.fixture(scope="module")
def reasoner(tiny_llm_dir) -> LLMReasoner:
    torch.manual_seed(0)
    r = make_reasoner(tiny_llm_dir)
    # A freshly initialised tiny Llama (std 0.02) greedily repeats one token; scramble every
    # matrix (LoRA B included, which PEFT starts at zero) so outputs are diverse and LoRA matters.
    scramble(r)
    return r


def turns(n: int) -> list[str]:
    briefs = [[("audio", "The voice trembles."), ("visual", "Tears on the cheeks.")], [("text", "She says it is fine.")], []]
    return [compose_user_turn(f"{VIDEO_PLACEHOLDER} Clip {i}: what is the emotion?", briefs[i % 3]) for i in range(n)]


# --------------------------------------------------------------------------- prompts
def test_compose_user_turn_orders_brief_and_keeps_text_around_placeholder():
    turn = compose_user_turn(f"Look. {VIDEO_PLACEHOLDER} Now answer.", [("audio", "Loud  voice."), ("au", " "), ("visual", "Frown.")])
    assert turn == f"Look. {VIDEO_PLACEHOLDER}\n{BRIEF_HEADER}\n[audio] Loud voice.\n[visual] Frown.\nNow answer."
    assert compose_user_turn("Answer.", []) == f"{VIDEO_PLACEHOLDER}\nAnswer."
    with pytest.raises(ValueError, match="2 times"):
        compose_user_turn(VIDEO_PLACEHOLDER * 2, [])
    with pytest.raises(ValueError, match="bare"):
        compose_user_turn(f"{IMAGE_TOKEN} x", [])


def test_chat_template_prompt_and_context_slot(reasoner):
    before, after = reasoner.render_prompt(turns(1)[0])
    assert before.endswith("<video>") and after.startswith("</video>")
    assert "You are an expert in multimodal emotion analysis." in before  # our system prompt, not SmolLM's default
    assert "SmolLM" not in before
    assert after.endswith("<|im_start|>assistant\n")
    context = torch.randn(1, Q, reasoner.hidden_size)
    inputs = reasoner.build_inputs(context, turns(1), ["happy"])
    slot = inputs.context_mask[0].nonzero().flatten()
    assert slot.tolist() == list(range(int(slot[0]), int(slot[0]) + Q))  # contiguous block of Q positions
    assert torch.equal(inputs.inputs_embeds[0, slot], context[0])
    # everything else is the token embedding of the rendered prompt + answer
    left_ids = reasoner.tokenizer(before, add_special_tokens=False)["input_ids"]
    assert int(slot[0]) == len(left_ids)
    assert torch.equal(inputs.inputs_embeds[0, : len(left_ids)], reasoner.embed_tokens(torch.tensor(left_ids)))


def test_prompt_template_without_chat_template(tiny_llm_dir):
    r = make_reasoner(tiny_llm_dir, use_chat_template=False, system_prompt="", lora_r=0)
    before, after = r.render_prompt(turns(1)[0])
    assert before == "[INST] <video>" and after.endswith(" [/INST]")
    (left, _), = r.prompt_ids(turns(1))
    assert left[0] == r.tokenizer.bos_token_id  # BOS is added explicitly without a chat template
    with pytest.raises(ValueError, match="exactly one"):
        ReasonerConfig.from_model_cfg({"llm": {"path": str(tiny_llm_dir)}, "prompt_template": "[INST] no slot"})


# ----------------------------------------------------------------------- label masking
def test_labels_cover_only_answer_and_eos(reasoner):
    tok = reasoner.tokenizer
    answers = ['### Prediction\n{"emotion": "sad"}', "neutral"]
    context = torch.randn(2, Q, reasoner.hidden_size)
    inputs = reasoner.build_inputs(context, turns(2), answers, padding_side="right")
    for b, answer in enumerate(answers):
        expected = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        labels = inputs.labels[b]
        kept = labels[labels != IGNORE_INDEX].tolist()
        assert kept == expected
        n_real = int(inputs.attention_mask[b].sum())
        # right padding: real tokens first, the answer is the last real span, padding is ignored
        assert inputs.attention_mask[b, :n_real].all() and not inputs.attention_mask[b, n_real:].any()
        assert labels[n_real - len(expected): n_real].tolist() == expected
        assert (labels[: n_real - len(expected)] == IGNORE_INDEX).all()
        assert (labels[n_real:] == IGNORE_INDEX).all()
        assert not (inputs.context_mask[b] & (labels != IGNORE_INDEX)).any()


def reference_loss(reasoner, context, user_turns, answers, prefixes=None) -> torch.Tensor:
    """Each clip alone (no padding), token losses summed by hand, averaged over the batch's answer tokens."""
    total, count = 0.0, 0
    for b in range(len(answers)):
        one = reasoner.build_inputs(context[b: b + 1], user_turns[b: b + 1], answers[b: b + 1],
                                    prefixes=None if prefixes is None else prefixes[b: b + 1])
        logits = reasoner.llm(inputs_embeds=one.inputs_embeds, attention_mask=one.attention_mask).logits[0]
        labels = one.labels[0]
        pos = (labels[1:] != IGNORE_INDEX).nonzero().flatten()
        total = total + F.cross_entropy(logits[pos].float(), labels[1:][pos], reduction="sum")
        count += len(pos)
    return total / count


def test_loss_is_cross_entropy_over_answer_tokens_only(reasoner):
    context = torch.randn(2, Q, reasoner.hidden_size)
    answers = ["happy and calm", "sad"]
    loss = reasoner(context, turns(2), answers)
    torch.testing.assert_close(loss, reference_loss(reasoner, context, turns(2), answers), rtol=1e-4, atol=1e-5)
    # padding is invisible: garbage in the padded positions changes nothing
    padded = reasoner.build_inputs(context, turns(2), answers)
    noisy = padded.inputs_embeds.clone()
    noisy[padded.attention_mask == 0] = 1e3
    out = reasoner.llm(inputs_embeds=noisy, attention_mask=padded.attention_mask, labels=padded.labels)
    torch.testing.assert_close(out.loss, loss, rtol=1e-4, atol=1e-5)


def test_a_given_prefix_is_read_not_learned(reasoner):
    """Training with `prefixes` (the evidence section given, as generation gives it): the prefix
    sits between prompt and answer with no label, tokenised apart as generation tokenises it."""
    tok = reasoner.tokenizer
    context = torch.randn(3, Q, reasoner.hidden_size)
    prefixes = ["### Evidence Analysis\n- Audio: The voice trembles.\n### Rationale\n", "", "Given. "]
    answers = ["It sounds sad.", "neutral", "Calm words, calm face."]
    inputs = reasoner.build_inputs(context, turns(3), answers, prefixes=prefixes, padding_side="left")
    loss = reasoner(context, turns(3), answers, prefixes)
    for b in range(3):
        pre = tok(prefixes[b], add_special_tokens=False)["input_ids"] if prefixes[b] else []
        ans = tok(answers[b], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        labels = inputs.labels[b]
        assert labels[labels != IGNORE_INDEX].tolist() == ans  # only the answer is learned
        row = inputs.attention_mask[b].bool()
        ids_end = reasoner.prompt_ids(turns(3)[b: b + 1])[0][1]
        # the tokens right before the answer are the prefix, right after the prompt's end
        n = labels.shape[0]
        if pre:
            assert torch.equal(inputs.inputs_embeds[b, n - len(ans) - len(pre): n - len(ans)],
                               reasoner.embed_tokens(torch.tensor(pre)))
        assert torch.equal(inputs.inputs_embeds[b, n - len(ans) - len(pre) - len(ids_end): n - len(ans) - len(pre)],
                           reasoner.embed_tokens(torch.tensor(ids_end)))
        assert row[-1] and not (inputs.context_mask[b] & (labels != IGNORE_INDEX)).any()
    reference = reference_loss(reasoner, context, turns(3), answers, prefixes)
    torch.testing.assert_close(loss, reference, rtol=1e-4, atol=1e-5)


def test_answer_is_truncated_never_the_prompt(tiny_llm_dir):
    r = make_reasoner(tiny_llm_dir, max_txt_len=5, lora_r=0)
    long_answer = " ".join(["word"] * 50)
    brief_turn = compose_user_turn("Answer.", [("audio", " ".join(["evidence"] * 80))])
    inputs = r.build_inputs(torch.zeros(1, Q, r.hidden_size), [brief_turn], [long_answer])
    labels = inputs.labels[0]
    kept = labels[labels != IGNORE_INDEX].tolist()
    assert len(kept) == 5 and r.tokenizer.eos_token_id not in kept  # cut answer, no false EOS
    before, after = r.render_prompt(brief_turn)
    n_prompt = len(r.tokenizer(before, add_special_tokens=False)["input_ids"]) + Q + len(
        r.tokenizer(after, add_special_tokens=False)["input_ids"])
    assert inputs.inputs_embeds.shape[1] == n_prompt + 5


# ----------------------------------------------------------------------------- LoRA
def test_only_lora_and_context_get_gradients(reasoner):
    reasoner.zero_grad(set_to_none=True)
    context = torch.randn(2, Q, reasoner.hidden_size, requires_grad=True)
    reasoner(context, turns(2), ["happy", "sad"]).backward()
    trainable = {n for n, p in reasoner.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    for name, p in reasoner.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    assert context.grad is not None and context.grad.abs().sum() > 0
    reasoner.zero_grad(set_to_none=True)


def test_lora_r_zero_freezes_everything(tiny_llm_dir):
    r = make_reasoner(tiny_llm_dir, lora_r=0)
    assert not any(p.requires_grad for p in r.parameters())
    context = torch.randn(1, Q, r.hidden_size, requires_grad=True)
    r(context, turns(1), ["happy"]).backward()
    assert context.grad is not None  # the experts below still learn through the frozen LLM


def test_gradient_checkpointing_gives_the_same_gradients(tiny_llm_dir, reasoner):
    r = make_reasoner(tiny_llm_dir, gradient_checkpointing=True)
    r.load_state_dict(reasoner.state_dict())
    r.train()
    context = torch.randn(2, Q, r.hidden_size)
    grads = []
    for model in (reasoner, r):
        model.zero_grad(set_to_none=True)
        model(context, turns(2), ["happy", "sad"]).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6)
    reasoner.zero_grad(set_to_none=True)


# ------------------------------------------------------------------------ config errors
def test_config_errors_are_clear(tiny_llm_dir):
    with pytest.raises(ValueError, match="model.llm.path"):
        ReasonerConfig.from_model_cfg({"llm": {}})
    with pytest.raises(ValueError, match="model.llm.dtype"):
        resolve_dtype("float8")
    with pytest.raises(ValueError, match="lora_target_modules"):
        make_reasoner(tiny_llm_dir, lora_target_modules="no_such_proj")
    assert ReasonerConfig.from_model_cfg({"llm": {"path": "x", "lora_target_modules": "q_proj, k_proj"}}).lora_target_modules == ("q_proj", "k_proj")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_quantised_loading_needs_cuda(tiny_llm_dir):
    with pytest.raises(RuntimeError, match="CUDA"):
        make_reasoner(tiny_llm_dir, load_in_4bit=True)
    with pytest.raises(ValueError, match="exclusive"):
        make_reasoner(tiny_llm_dir, load_in_4bit=True, load_in_8bit=True)


# ----------------------------------------------------------------------- generation
def test_batched_generation_equals_one_by_one(reasoner):
    reasoner.eval()
    context = torch.randn(3, Q, reasoner.hidden_size)
    prompts = turns(3)  # different lengths -> real left padding
    kwargs = dict(max_new_tokens=12, min_new_tokens=12)
    batched = reasoner.generate_ids(context, prompts, **kwargs)
    assert batched.shape == (3, 12)
    assert len(set(batched[0].tolist())) > 3  # a diverse continuation, not one repeated token
    for i in range(3):
        single = reasoner.generate_ids(context[i: i + 1], prompts[i: i + 1], **kwargs)
        assert torch.equal(single[0], batched[i])
    assert torch.equal(reasoner.generate_ids(context, prompts, use_cache=False, **kwargs), batched)
    texts = reasoner.generate(context, prompts, **kwargs)
    assert texts == reasoner.decode(batched) and all(texts)
    beams = reasoner.generate(context, prompts, num_beams=2, max_new_tokens=6)
    sampled = reasoner.generate(context, prompts, do_sample=True, temperature=0.7, top_p=0.9, max_new_tokens=6)
    assert len(beams) == len(sampled) == 3


def test_generation_stops_at_eos(reasoner):
    reasoner.eval()
    context = torch.randn(2, Q, reasoner.hidden_size)
    eos = reasoner.tokenizer.eos_token_id
    # make EOS the model's favourite token: generation must end right away, padded with pad id
    ids = reasoner.generate_ids(context, turns(2), max_new_tokens=8, sequence_bias={(eos,): 1e4})
    assert ids.shape == (2, 1) and (ids == eos).all()
    assert reasoner.decode(ids) == ["", ""]


def scramble(module: torch.nn.Module) -> None:
    """Re-draw every matrix with std 0.2 (see the `reasoner` fixture for why)."""
    with torch.no_grad():
        for p in module.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.2)


def test_end_symbol_is_learned_and_stops_generation(tiny_llm_dir):
    plain = make_reasoner(tiny_llm_dir, lora_r=0)
    scramble(plain)
    context = torch.randn(1, Q, plain.hidden_size)
    free = plain.generate(context, turns(1), max_new_tokens=16, min_new_tokens=16)[0]
    end_sym = free[len(free) // 2: len(free) // 2 + 3]
    assert end_sym.strip(), free
    r = make_reasoner(tiny_llm_dir, end_sym=end_sym, lora_r=0)
    r.load_state_dict(plain.state_dict())
    inputs = r.build_inputs(torch.zeros(1, Q, r.hidden_size), turns(1), ["happy"])
    kept = inputs.labels[0][inputs.labels[0] != IGNORE_INDEX].tolist()
    assert r.tokenizer.decode(kept) == f"happy{end_sym}<|im_end|>"
    stopped_ids = r.generate_ids(context, turns(1), max_new_tokens=16, min_new_tokens=16)
    assert stopped_ids.shape[1] < 16  # stopped early, at the end symbol
    assert r.decode(stopped_ids)[0] == free.split(end_sym)[0].strip()
