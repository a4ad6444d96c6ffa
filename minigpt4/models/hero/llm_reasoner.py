"""The reasoning half of HERO: a causal LM that reads the integrated video context and writes the report.

`LLMReasoner` owns everything that touches the language model: loading it and its tokenizer
from `model.llm.path`, freezing the base and adding LoRA through PEFT, turning a user turn
with the `<video><VideoHere></video>` placeholder into input embeddings (the integrated
context `[B, Q, llm_dim]` goes where `<VideoHere>` stands), masking the prompt out of the
labels, and batched generation with the KV cache. It knows nothing about experts: the
evidence brief arrives as text lines (`user_turn.compose_user_turn`).
"""
from __future__ import annotations

import importlib.util
import inspect
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn

from minigpt4.common.modalities import IMAGE_TOKEN, VIDEO_PLACEHOLDER
from minigpt4.common.precision import auto_half_dtype
from minigpt4.common.schema import LLMConfig, ModelConfig, model_config

IGNORE_INDEX = -100

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}

DEFAULT_PROMPT_TEMPLATE = ModelConfig.prompt_template
DEFAULT_SYSTEM_PROMPT = ModelConfig.system_prompt


def resolve_dtype(name: str) -> torch.dtype:
    """`auto` -> bfloat16 on a CUDA machine with bf16 support, float16 on older GPUs, float32 on CPU."""
    name = str(name).lower()
    if name == "auto":
        return auto_half_dtype("cuda" if torch.cuda.is_available() else "cpu") or torch.float32
    if name not in _DTYPES:
        raise ValueError(f"model.llm.dtype: unknown dtype {name!r}; use auto, {', '.join(_DTYPES)}")
    return _DTYPES[name]


@dataclass(frozen=True)
class ReasonerConfig:
    """What `LLMReasoner` reads from the model config (keys under `model.llm` unless noted)."""

    path: str
    dtype: str = LLMConfig.dtype
    lora_r: int = LLMConfig.lora_r
    lora_alpha: int = LLMConfig.lora_alpha
    lora_dropout: float = LLMConfig.lora_dropout
    lora_target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    gradient_checkpointing: bool = LLMConfig.gradient_checkpointing
    load_in_4bit: bool = LLMConfig.load_in_4bit
    load_in_8bit: bool = LLMConfig.load_in_8bit
    trust_remote_code: bool = LLMConfig.trust_remote_code
    # the keys below live directly under `model`
    use_chat_template: bool = ModelConfig.use_chat_template
    system_prompt: Optional[str] = DEFAULT_SYSTEM_PROMPT
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    max_txt_len: int = ModelConfig.max_txt_len
    end_sym: Optional[str] = None
    context_dim: Optional[int] = None  # width of the context it reads; null: the LLM's hidden size

    @classmethod
    def from_model_cfg(cls, cfg_model: Any) -> "ReasonerConfig":
        c = model_config(cfg_model)
        if not c.llm.path:
            raise ValueError("model.llm.path is required: a local folder or a hub id of a causal LM")
        llm = c.llm
        return cls(
            path=llm.path, dtype=llm.dtype, lora_r=llm.lora_r, lora_alpha=llm.lora_alpha,
            lora_dropout=llm.lora_dropout, lora_target_modules=tuple(llm.lora_target_modules),
            gradient_checkpointing=llm.gradient_checkpointing, load_in_4bit=llm.load_in_4bit,
            load_in_8bit=llm.load_in_8bit, trust_remote_code=llm.trust_remote_code,
            use_chat_template=c.use_chat_template, system_prompt=c.system_prompt or None,
            prompt_template=c.prompt_template, max_txt_len=c.max_txt_len, end_sym=c.end_sym or None,
            context_dim=c.context_dim,
        )


@dataclass
class LLMInputs:
    """A padded batch for the LLM. Shapes: embeds [B, L, D], masks/labels [B, L]."""

    inputs_embeds: Tensor
    attention_mask: Tensor
    labels: Optional[Tensor]
    context_mask: Tensor  # bool [B, L]: True where a context vector stands


def load_tokenizer(cfg: ReasonerConfig):
    """The LLM's tokenizer; a missing pad token becomes the EOS token (masks make it harmless)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(cfg.path, trust_remote_code=cfg.trust_remote_code)
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise ValueError(f"tokenizer at {cfg.path} has neither a pad nor an EOS token")
        tok.pad_token = tok.eos_token
    if tok.eos_token_id is None:
        raise ValueError(f"tokenizer at {cfg.path} has no EOS token: generation could never stop")
    return tok


def _quantization_config(cfg: ReasonerConfig, dtype: torch.dtype):
    """A BitsAndBytesConfig for 4/8-bit loading, or None. CUDA and bitsandbytes are required."""
    if not (cfg.load_in_4bit or cfg.load_in_8bit):
        return None
    which = "load_in_4bit" if cfg.load_in_4bit else "load_in_8bit"
    if cfg.load_in_4bit and cfg.load_in_8bit:
        raise ValueError("model.llm.load_in_4bit and model.llm.load_in_8bit are exclusive; set one")
    if not torch.cuda.is_available():
        raise RuntimeError(f"model.llm.{which} needs a CUDA GPU (bitsandbytes kernels); this machine has none. "
                           "Set it to false to load the LLM unquantised.")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(f"model.llm.{which} needs the bitsandbytes package: pip install bitsandbytes")
    from transformers import BitsAndBytesConfig

    if cfg.load_in_4bit:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_use_double_quant=True)
    return BitsAndBytesConfig(load_in_8bit=True)


def load_llm(cfg: ReasonerConfig) -> nn.Module:
    """Load the causal LM, freeze it, then (lora_r > 0) wrap it with trainable LoRA adapters."""
    from transformers import AutoModelForCausalLM

    dtype = resolve_dtype(cfg.dtype)
    quant = _quantization_config(cfg, dtype)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": cfg.trust_remote_code}
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    llm = AutoModelForCausalLM.from_pretrained(cfg.path, **kwargs)
    for p in llm.parameters():
        p.requires_grad_(False)
    if quant is not None:
        from peft import prepare_model_for_kbit_training

        llm = prepare_model_for_kbit_training(llm, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        # Non-reentrant checkpointing: the graph reaches the trainable context through
        # `inputs_embeds`, so no `enable_input_require_grads` hook is needed.
        if hasattr(llm, "activation_checkpointing_enable"):  # transformers >= 5.2x name
            llm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.gradient_checkpointing:
        llm.config.use_cache = False
    if cfg.lora_r > 0:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=list(cfg.lora_target_modules), bias="none", task_type="CAUSAL_LM")
        try:
            llm = get_peft_model(llm, lora)
        except ValueError as err:
            raise ValueError(f"model.llm.lora_target_modules={list(cfg.lora_target_modules)} does not fit "
                             f"the LLM at {cfg.path}: {err}") from err
    return llm


class LLMReasoner(nn.Module):
    """Causal LM + tokenizer + prompt assembly. Trainable parameters: the LoRA adapters, and the linear
    bridge `context_proj` [context_dim -> hidden size] when the context has another width than the LLM."""

    def __init__(self, cfg: ReasonerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokenizer = load_tokenizer(cfg)
        self.llm = load_llm(cfg)
        self._has_template = bool(cfg.use_chat_template and getattr(self.tokenizer, "chat_template", None))
        self._eos_ids = self._stop_token_ids()
        base = self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm
        self._supports_logits_to_keep = "logits_to_keep" in inspect.signature(base.forward).parameters
        width = self.hidden_size
        self.context_proj = nn.Linear(cfg.context_dim, width) if cfg.context_dim not in (None, width) else None

    # ------------------------------------------------------------------ facts
    @property
    def hidden_size(self) -> int:
        return int(self.llm.get_input_embeddings().embedding_dim)

    @property
    def context_dim(self) -> int:
        """Width of the context `build_inputs` takes (the bridge maps it to `hidden_size`)."""
        return int(self.cfg.context_dim or self.hidden_size)

    @property
    def vocab_size(self) -> int:
        """Token ids the tokenizer can decode (the embedding table may be padded beyond it)."""
        return len(self.tokenizer)

    @property
    def embed_dtype(self) -> torch.dtype:
        return self.llm.get_input_embeddings().weight.dtype

    def embed_tokens(self, ids: Tensor) -> Tensor:
        """The LLM's input embeddings of `ids` [...] -> [..., D]."""
        return self.llm.get_input_embeddings()(ids)

    def _stop_token_ids(self) -> list[int]:
        """EOS of the tokenizer plus any end-of-turn ids the model's generation config lists."""
        ids = [int(self.tokenizer.eos_token_id)]
        gen_cfg = getattr(self.llm, "generation_config", None)
        extra = getattr(gen_cfg, "eos_token_id", None) if gen_cfg is not None else None
        for i in ([extra] if isinstance(extra, int) else list(extra or [])):
            if int(i) not in ids:
                ids.append(int(i))
        return ids

    # ---------------------------------------------------------------- prompts
    def render_prompt(self, user_turn: str) -> tuple[str, str]:
        """Full prompt text around the `<VideoHere>` slot: (text before, text after).

        Uses the tokenizer's chat template (with `system_prompt` as the system turn; templates
        without a system role get it prepended to the user turn), else `prompt_template`.
        """
        if user_turn.count(IMAGE_TOKEN) != 1:
            raise ValueError(f"the user turn must hold {IMAGE_TOKEN} exactly once: {user_turn!r}")
        system = self.cfg.system_prompt
        if self._has_template:
            text = self._apply_template(user_turn, system)
        else:
            body = f"{system}\n\n{user_turn}" if system else user_turn
            text = self.cfg.prompt_template.format(body)
        before, _, after = text.partition(IMAGE_TOKEN)
        return before, after

    def _apply_template(self, user_turn: str, system: Optional[str]) -> str:
        from jinja2.exceptions import TemplateError

        messages = [{"role": "user", "content": user_turn}]
        if system:
            try:
                return self.tokenizer.apply_chat_template([{"role": "system", "content": system}] + messages,
                                                          tokenize=False, add_generation_prompt=True)
            except TemplateError:  # e.g. templates that reject a system role
                messages = [{"role": "user", "content": f"{system}\n\n{user_turn}"}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        return [list(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def answer_ids(self, answers: Sequence[str]) -> list[list[int]]:
        """Target tokens: answer (+ end_sym) + EOS, cut to `max_txt_len` (a cut answer loses its EOS)."""
        suffix = self.cfg.end_sym or ""
        eos = int(self.tokenizer.eos_token_id)
        return [(ids + [eos])[: self.cfg.max_txt_len] for ids in self._encode([a + suffix for a in answers])]

    def prompt_ids(self, user_turns: Sequence[str]) -> list[tuple[list[int], list[int]]]:
        """(ids before the context slot, ids after it) per sample; BOS first without a chat template."""
        parts = [self.render_prompt(t) for t in user_turns]
        left = self._encode([p[0] for p in parts])
        right = self._encode([p[1] for p in parts])
        bos = self.tokenizer.bos_token_id
        if not self._has_template and bos is not None:
            left = [ids if ids[:1] == [bos] else [int(bos)] + ids for ids in left]
        return list(zip(left, right))

    def build_inputs(
        self,
        context: Tensor,
        user_turns: Sequence[str],
        answers: Optional[Sequence[str]] = None,
        padding_side: str = "right",
        prefixes: Optional[Sequence[str]] = None,
    ) -> LLMInputs:
        """Embed prompt [+ answer] with `context` [B, Q, D] in the video slot, padded to [B, L, D].

        Labels are the answer ids and IGNORE_INDEX on prompt, context and padding; the prompt is
        never truncated (the answer is, by `answer_ids`). `prefixes`: the start of each answer,
        given rather than generated (no EOS): generation continues it; in training it stands
        between the prompt and the answer, read but not learned (IGNORE_INDEX), tokenised apart
        exactly as generation tokenises it.
        """
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        batch, num_ctx, dim = context.shape
        if len(user_turns) != batch or (answers is not None and len(answers) != batch):
            raise ValueError(f"batch of {batch} contexts but {len(user_turns)} prompts"
                             + ("" if answers is None else f" and {len(answers)} answers"))
        if dim != self.context_dim:
            raise ValueError(f"context width {dim} != the LLM's context width {self.context_dim} (model.context_dim)")
        if self.context_proj is not None:
            context = self.context_proj(context.to(self.context_proj.weight.dtype))
        prompts = self.prompt_ids(user_turns)
        if prefixes is not None and len(prefixes) != batch:
            raise ValueError(f"batch of {batch} contexts but {len(prefixes)} prefixes")
        given = self._encode(list(prefixes)) if prefixes is not None else [[] for _ in range(batch)]
        targets = self.answer_ids(answers) if answers is not None else [[] for _ in range(batch)]
        pad = int(self.tokenizer.pad_token_id)
        rows, ctx_flags, label_rows = [], [], []
        for (left, right), pre, ans in zip(prompts, given, targets):
            rows.append(left + [pad] * num_ctx + right + pre + ans)
            ctx_flags.append([False] * len(left) + [True] * num_ctx + [False] * (len(right) + len(pre) + len(ans)))
            label_rows.append([IGNORE_INDEX] * (len(left) + num_ctx + len(right) + len(pre)) + ans)
        length = max(len(r) for r in rows)
        device = context.device
        ids = torch.full((batch, length), pad, dtype=torch.long)
        attn = torch.zeros((batch, length), dtype=torch.long)
        ctx_mask = torch.zeros((batch, length), dtype=torch.bool)
        labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
        for b, (row, flags, lab) in enumerate(zip(rows, ctx_flags, label_rows)):
            span = slice(0, len(row)) if padding_side == "right" else slice(length - len(row), length)
            ids[b, span] = torch.tensor(row)
            attn[b, span] = 1
            ctx_mask[b, span] = torch.tensor(flags)
            labels[b, span] = torch.tensor(lab)
        ids, attn, ctx_mask, labels = (t.to(device) for t in (ids, attn, ctx_mask, labels))
        embeds = self.embed_tokens(ids)
        embeds = embeds.masked_scatter(ctx_mask.unsqueeze(-1), context.to(embeds.dtype))
        return LLMInputs(embeds, attn, labels if answers is not None else None, ctx_mask)

    # ------------------------------------------------------------- train/gen
    def forward(self, context: Tensor, user_turns: Sequence[str], answers: Sequence[str],
                prefixes: Optional[Sequence[str]] = None) -> Tensor:
        """Mean next-token cross-entropy over the answer tokens of the batch (scalar); `prefixes`:
        given starts of the answers, read but not learned (`build_inputs`).

        Rows are left-padded, as for generation, with positions counted over real tokens (as
        `generate` counts them), so every row's answer ends at the last position and the answer
        positions of the batch are one short tail: logits are computed there only
        (`logits_to_keep`), not over the prompt, which is most of the sequence, nor over the
        other rows' prompt lengths (right padding scattered the answers over ~3x more positions).
        """
        inputs = self.build_inputs(context, user_turns, answers, padding_side="left", prefixes=prefixes)
        attn = inputs.attention_mask
        positions = (attn.cumsum(-1) - 1).clamp(min=0)
        targets = inputs.labels[:, 1:]
        keep = (targets != IGNORE_INDEX).any(0).nonzero().flatten()  # [K] positions whose next token is learned
        if keep.numel() == 0:
            raise ValueError("no answer token to learn in this batch (empty answers or max_txt_len too small)")
        if self._supports_logits_to_keep:
            logits = self.llm(inputs_embeds=inputs.inputs_embeds, attention_mask=attn, position_ids=positions,
                              use_cache=False, logits_to_keep=keep).logits  # [B, K, V]
        else:
            logits = self.llm(inputs_embeds=inputs.inputs_embeds, attention_mask=attn, position_ids=positions,
                              use_cache=False).logits[:, keep]
        return nn.functional.cross_entropy(logits.float().flatten(0, 1), targets[:, keep].flatten(),
                                           ignore_index=IGNORE_INDEX)

    @torch.no_grad()
    def generate_ids(
        self,
        context: Tensor,
        user_turns: Sequence[str],
        max_new_tokens: int = 300,
        num_beams: int = 1,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        use_cache: bool = True,
        prefixes: Optional[Sequence[str]] = None,
        **gen_kwargs: Any,
    ) -> Tensor:
        """Batched decoding (left padding, KV cache): new token ids [B, N], padded with pad id
        (after each sample's given `prefixes` text, when set).

        `use_cache=False` runs `greedy_without_cache` instead (transformers 5 always caches when
        generating from `inputs_embeds`): the reference and benchmark baseline, greedy only.
        """
        inputs = self.build_inputs(context, user_turns, None, padding_side="left", prefixes=prefixes)
        if not use_cache:
            if num_beams != 1 or do_sample or self.cfg.end_sym or set(gen_kwargs) - {"min_new_tokens"}:
                raise ValueError("use_cache=False supports plain greedy decoding only (num_beams=1, "
                                 "do_sample=False, no end_sym, only min_new_tokens)")
            return self.greedy_without_cache(inputs, int(max_new_tokens), int(gen_kwargs.get("min_new_tokens", 0)))
        kwargs: dict[str, Any] = dict(
            inputs_embeds=inputs.inputs_embeds,
            attention_mask=inputs.attention_mask,
            max_new_tokens=int(max_new_tokens),
            num_beams=int(num_beams),
            do_sample=bool(do_sample),
            eos_token_id=self._eos_ids,
            pad_token_id=int(self.tokenizer.pad_token_id),
        )
        if do_sample:
            kwargs.update(temperature=float(temperature), top_p=float(top_p))
        else:  # keep the model's sampling defaults from triggering "unused flag" warnings
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if self.cfg.end_sym:
            kwargs.update(stop_strings=[self.cfg.end_sym], tokenizer=self.tokenizer)
        kwargs.update(gen_kwargs)
        # with inputs_embeds, transformers 5 returns only the new tokens
        return self.llm.generate(**kwargs)

    @torch.no_grad()
    def greedy_without_cache(self, inputs: LLMInputs, max_new_tokens: int, min_new_tokens: int = 0) -> Tensor:
        """Greedy decoding that re-runs the whole sequence every step (no KV cache): ids [B, N].

        Same semantics as `generate_ids`: left-padded prompt, positions counted over real
        tokens, EOS banned before `min_new_tokens`, finished rows padded with the pad id.
        """
        embeds, attn = inputs.inputs_embeds, inputs.attention_mask
        positions = (attn.cumsum(-1) - 1).clamp(min=0)
        eos = torch.tensor(self._eos_ids, device=embeds.device)
        pad = int(self.tokenizer.pad_token_id)
        finished = torch.zeros(embeds.shape[0], dtype=torch.bool, device=embeds.device)
        out: list[Tensor] = []
        for step in range(max_new_tokens):
            logits = self.llm(inputs_embeds=embeds, attention_mask=attn, position_ids=positions,
                              use_cache=False, logits_to_keep=1).logits[:, -1].float()
            if step < min_new_tokens:
                logits[:, eos] = float("-inf")
            token = logits.argmax(-1).masked_fill(finished, pad)
            out.append(token)
            finished |= torch.isin(token, eos)
            if bool(finished.all()):
                break
            embeds = torch.cat([embeds, self.embed_tokens(token)[:, None].to(embeds.dtype)], dim=1)
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
            positions = torch.cat([positions, positions[:, -1:] + 1], dim=1)
        if not out:
            return torch.empty(embeds.shape[0], 0, dtype=torch.long, device=embeds.device)
        return torch.stack(out, dim=1)

    def decode(self, ids: Tensor) -> list[str]:
        """Text of generated ids [B, N]: special tokens dropped, cut at `end_sym`, stripped."""
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        if self.cfg.end_sym:
            texts = [t.split(self.cfg.end_sym)[0] for t in texts]
        return [t.strip() for t in texts]

    def generate(self, context: Tensor, user_turns: Sequence[str], prefixes: Optional[Sequence[str]] = None,
                 **kwargs: Any) -> list[str]:
        """`generate_ids` then `decode`: the answer per sample (its given prefix + the generated rest)."""
        texts = self.decode(self.generate_ids(context, user_turns, prefixes=prefixes, **kwargs))
        return texts if prefixes is None else [(p + t).strip() for p, t in zip(prefixes, texts)]
