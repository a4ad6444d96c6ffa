"""The typed run and model configuration: every key, its type and its default, written once.

A YAML config is merged as a plain OmegaConf tree (includes, `--options`), then each section
with a schema is checked here: a key the schema does not define is an error naming the file
and the nearest valid key, a value of the wrong type or out of range is an error naming the
key. `RunConfig` is the `run` section; `ModelConfig` the `model` section of `arch: hero`
(other registered architectures keep their own keys). Code reads defaults from these classes
only: the shipped YAML files may restate a value, never a different default.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from minigpt4.common.modalities import DEFAULT_EMOTIONS, STACK_ORDER
from minigpt4.common.typed_config import (
    ConfigError,
    build,
    check_keys,
    nearest,
    schema_keys,
)
from minigpt4.common.typed_config import nonnegative as _nonnegative
from minigpt4.common.typed_config import one_of as _one_of
from minigpt4.common.typed_config import positive as _positive

__all__ = ["ConfigError", "EvidenceDecoderConfig", "LLMConfig", "MODEL_SCHEMAS", "ModelConfig", "RunConfig",
           "STMILConfig", "build", "check_keys", "check_model_source", "model_config", "nearest", "run_defaults",
           "schema_keys"]

BRIEF_SOURCES: tuple[str, ...] = ("generated", "golden", "none")
REPORT_EVIDENCE: tuple[str, ...] = ("experts", "llm")
BRIEF_LINES: tuple[str, ...] = ("all", "unreported")
DECISIONS: tuple[str, ...] = ("head", "head_and_experts", "refit")  # model.decision (models/hero/decision_fusion.py)
DECODING_MODES: tuple[str, ...] = ("greedy", "bank", "readout")  # model.evidence_decoder.decoding
STMIL_MODES: tuple[str, ...] = ("conditional", "unconditional")  # model.stmil.mode
STMIL_OBJECTIVES: tuple[str, ...] = ("covariance", "vclub")  # model.stmil.objective
# model keys that choose how a trained model is asked, not what its weights compute: an eval may
# set them differently from the run's config.yaml without that being config drift
INFERENCE_MODEL_KEYS: frozenset[str] = frozenset({"report_evidence", "evidence_decoder.decoding"})
TRAIN_STAGES: tuple[str, ...] = ("joint", "observation")  # model.train_stage (README "Staged training")
# what `model.llm.dtype` may say (minigpt4/models/hero/llm_reasoner.resolve_dtype reads it)
LLM_DTYPES: tuple[str, ...] = ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$", re.IGNORECASE)
# a Hugging Face hub id: `name` or `org/name` (huggingface_hub.utils.validate_repo_id's rule)
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


# ------------------------------------------------------------------------------ run
@dataclass
class RunConfig:
    """The runner's keys (`run:`); see README "Configuration" for what each does."""

    task: str = "hero"
    runner: str = "runner_base"
    output_dir: str = "output/hero_pretrain"
    seed: int = 42
    device: str = "auto"  # cpu | cuda | cuda:N | auto
    max_epoch: int = 10
    iters_per_epoch: Optional[int] = None  # cap on batches per epoch (required for datasets without len())
    batch_size_train: int = 8
    batch_size_eval: int = 8
    num_workers: int = 0
    drop_last: bool = True  # train loader: full batches only
    lr_sched: str = "linear_warmup_cosine_lr"  # or constant_lr
    init_lr: float = 1.0e-4
    min_lr: float = 1.0e-6
    warmup_lr: float = 1.0e-6
    warmup_steps: int = 0  # optimiser steps
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.999
    accum_grad_iters: int = 1
    max_grad_norm: Optional[float] = 1.0  # null or <= 0: no clipping
    amp: str = "auto"  # auto | bf16 | fp16 | none (auto: bf16/fp16 on CUDA, fp32 on CPU)
    log_freq: int = 10  # optimiser steps between log lines
    save_freq: int = 0  # optimiser steps between checkpoints (0: only at epoch ends)
    save_every_epoch: bool = True
    keep_last_k: int = 3
    best_metric: str = "auto"  # validation term that picks the best checkpoint; auto: gen_accuracy if generated, else loss
    best_mode: str = "auto"  # min | max | auto (max for accuracy/f1/uar/agreement terms, else min)
    best_tie: str = "later"  # a validation score equal to the best so far: later (that checkpoint becomes best) | earlier
    val_generate: bool = True  # validate by generating reports on the val split (gen_* terms), when the task can
    val_max_new_tokens: int = 300  # generation budget of that validation
    # fit the classification head's temperature on the validation clips for every new best checkpoint
    # (calibration.json, applied by hero-eval / hero-infer / hero-app): needs a head and val_generate
    calibrate: bool = True
    resume_ckpt_path: Optional[str] = None  # checkpoint dir or run dir (its latest checkpoint)
    evaluate: bool = False  # only run validation
    train_splits: list[str] = field(default_factory=lambda: ["train"])
    valid_splits: list[str] = field(default_factory=lambda: ["val"])
    find_unused_parameters: bool = True  # DDP: modality dropout leaves some experts unused
    progress_bar: bool = True
    imports: list[str] = field(default_factory=list)  # extra modules that register models/builders/tasks

    def check(self) -> None:
        _positive(self, "run", ("max_epoch", "batch_size_train", "batch_size_eval", "accum_grad_iters", "log_freq",
                                "val_max_new_tokens"))
        _nonnegative(self, "run", ("num_workers", "warmup_steps", "save_freq", "keep_last_k", "init_lr", "min_lr",
                                   "warmup_lr", "weight_decay"))
        if self.iters_per_epoch is not None and self.iters_per_epoch < 1:
            raise ConfigError(f"run.iters_per_epoch must be >= 1 or null, got {self.iters_per_epoch}")
        for key in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"run.{key} must be in [0, 1), got {getattr(self, key)}")
        _one_of(self, "run", "amp", ("auto", "bf16", "fp16", "none"))
        _one_of(self, "run", "lr_sched", ("linear_warmup_cosine_lr", "constant_lr"))
        _one_of(self, "run", "best_mode", ("auto", "min", "max"))
        _one_of(self, "run", "best_tie", ("later", "earlier"))
        if not _DEVICE.match(self.device):
            raise ConfigError(f"run.device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        for key in ("task", "runner", "output_dir", "best_metric"):
            if not getattr(self, key).strip():
                raise ConfigError(f"run.{key} must not be empty")
        if not self.train_splits or not all(s.strip() for s in self.train_splits):
            raise ConfigError(f"run.train_splits must be a non-empty list of split names, got {self.train_splits}")


# ------------------------------------------------------------------------------ model
@dataclass
class LLMConfig:
    """`model.llm`: the causal LM the reasoner loads, and its LoRA."""

    path: Optional[str] = None  # local folder or hub id (required to build the model)
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    lora_r: int = 64  # 0: no LoRA, LLM frozen
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    gradient_checkpointing: bool = False
    load_in_4bit: bool = False  # bitsandbytes, CUDA only
    load_in_8bit: bool = False
    trust_remote_code: bool = False

    def check(self) -> None:
        _nonnegative(self, "model.llm", ("lora_r", "lora_alpha"))
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"model.llm.lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.dtype.lower() not in LLM_DTYPES:
            raise ConfigError(f"model.llm.dtype must be one of {', '.join(LLM_DTYPES)}, got {self.dtype!r}")
        if self.load_in_4bit and self.load_in_8bit:
            raise ConfigError("model.llm.load_in_4bit and model.llm.load_in_8bit are exclusive; set one")
        if self.lora_r > 0 and not self.lora_target_modules:
            raise ConfigError("model.llm.lora_target_modules must name at least one module when model.llm.lora_r > 0")
        if self.path:
            check_model_source(self.path, "model.llm.path")


@dataclass
class STMILConfig:
    """`model.stmil`: the vCLUB q-network of the STMIL bound."""

    # conditional: I(audio summary; what is said | emotion), the content side frozen (the
    # clip's pooled text features), negatives from clips of the same emotion | unconditional:
    # I(audio summary; text summary), both trained (the earlier design, for ablation)
    mode: str = "conditional"
    # what lambda_stmil weights: covariance = the within-emotion cross-covariance (RV) of the
    # audio summary and the content, the vCLUB bound only logged | vclub = the bound itself
    objective: str = "covariance"
    hidden_dim: int = 256
    num_negatives: int = 1  # unconditional only: random derangements per training step
    logvar_bound: float = 5.0
    lr: Optional[float] = None  # the q-network's own optimiser; null: run.init_lr
    queue_size: int = 64  # conditional: content vectors kept per emotion as negatives
    warmup_steps: int = 300  # q fitted on the initial representations before step 1 (0: no warm-up)
    warmup_batches: int = 32  # training batches read for that warm-up
    # erase the content from the audio expert's output by construction (content_eraser.py):
    # the directions of the whitened summary whose within-emotion canonical correlation with the
    # pooled text features reaches erase_min_correlation, refitted from the training split every epoch
    erase: bool = False
    erase_min_correlation: float = 0.3
    # and beats the largest correlation the content reaches when shuffled within each emotion,
    # over this many shuffles (0: the fixed threshold alone)
    erase_null_permutations: int = 8

    def check(self) -> None:
        _positive(self, "model.stmil", ("hidden_dim", "num_negatives", "logvar_bound", "queue_size",
                                        "warmup_batches"))
        _nonnegative(self, "model.stmil", ("warmup_steps", "erase_null_permutations"))
        _one_of(self, "model.stmil", "mode", STMIL_MODES)
        _one_of(self, "model.stmil", "objective", STMIL_OBJECTIVES)
        if not 0.0 <= self.erase_min_correlation < 1.0:
            raise ConfigError(f"model.stmil.erase_min_correlation must be in [0, 1), got {self.erase_min_correlation}")
        if self.lr is not None and self.lr < 0:
            raise ConfigError(f"model.stmil.lr must be >= 0 or null, got {self.lr}")


@dataclass
class EvidenceDecoderConfig:
    """`model.evidence_decoder`: the shared decoder that writes each expert's sentence."""

    embed_dim: int = 256  # its own tied embedding over the LLM tokenizer's vocabulary
    num_layers: int = 2
    num_heads: int = 4
    max_len: int = 64
    dropout: Optional[float] = None  # null: model.dropout
    condition_on_readout: bool = False  # also read the expert's own emotion read-out (needs lambda_expert_cls > 0)
    # greedy: free-running | bank: the likeliest of the expert's recorded training sentences
    # (minigpt4/models/hero/evidence_bank.py) | readout: the recorded sentence a linear read-out of
    # the expert's summary ranks first (evidence_readout.py); an inference choice, both fitted either way
    decoding: str = "greedy"
    bank_size: int = 64  # distinct annotated sentences kept per expert; more: that expert decodes greedily
    readout_c: float = 0.1  # inverse ridge strength (scikit-learn's C) of the evidence read-out
    # the output layer scores only the tokens the decoder was taught, up to this many (more:
    # the full vocabulary from then on); 0: always the full vocabulary (evidence_vocab.py)
    output_vocab_size: int = 4096

    def check(self) -> None:
        _positive(self, "model.evidence_decoder", ("embed_dim", "num_layers", "num_heads", "max_len", "bank_size",
                                                   "readout_c"))
        if self.output_vocab_size < 0:
            raise ConfigError(f"model.evidence_decoder.output_vocab_size must be >= 0 (0: the full vocabulary), "
                              f"got {self.output_vocab_size}")
        _one_of(self, "model.evidence_decoder", "decoding", DECODING_MODES)
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"model.evidence_decoder.embed_dim ({self.embed_dim}) must be divisible by "
                              f"model.evidence_decoder.num_heads ({self.num_heads})")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.evidence_decoder.dropout must be in [0, 1) or null, got {self.dropout}")


@dataclass
class ModelConfig:
    """The `model` section of `arch: hero` (docs/ARCHITECTURE.md, "Model internals")."""

    arch: str = "hero"
    # true feature width of each modality (stack order: motion, audio, au, text, visual)
    visual_dim: int = 1024  # CLIP
    video_dim: int = 768  # VideoMAE (motion)
    audio_dim: int = 1024  # HuBERT
    au_dim: int = 35  # OpenFace action units
    text_dim: int = 768  # BERT
    # experts and integration
    hidden_dim: int = 768
    num_heads: int = 8
    num_queries: int = 32
    num_qformer_layers: int = 2
    num_output_queries: int = 64
    dropout: float = 0.1
    ffn_ratio: float = 4.0
    temporal_position: bool = True
    frame_encoder_layers: int = 0  # self-attention layers over each modality's frames before its queries read them
    # each frame also as its change from the clip's mean and from the frame before: true/false for every
    # modality, or a list of the modalities (STACK_ORDER names) whose experts read it
    frame_contrast: Union[bool, list[str]] = False
    include_synergy: bool = True
    integration_strategy: str = "audio"  # audio | dynamic | concat
    # width of the integrated context (and of the head on it); null: the LLM's hidden size. Another width
    # puts a trainable linear bridge before the LLM (`LLMReasoner.context_proj`), so a run through one LLM
    # can seed an LLM of another width (README "A real pretrained LLM")
    context_dim: Optional[int] = None
    # objectives
    lambda_stmil: float = 0.1
    lambda_sccl: float = 0.1
    lambda_synergy: float = 0.1
    lambda_evidence: float = 0.5
    lambda_cls: float = 1.0  # classification head on the integrated context
    lambda_expert_cls: float = 0.0  # a linear emotion read-out on every expert summary
    lambda_kl: float = 0.0  # robustness: KL from the full view to a modality-dropped one
    use_cls_head: Optional[bool] = None  # null: on iff lambda_cls or lambda_kl > 0
    kl_drop_prob: float = 0.5
    kl_temperature: float = 1.0
    sccl_temperature: float = 0.07
    sccl_dim: int = 256
    stmil: STMILConfig = field(default_factory=STMILConfig)
    # labels and the LLM's brief
    label_names: list[str] = field(default_factory=lambda: list(DEFAULT_EMOTIONS))
    num_classes: Optional[int] = None  # null: len(label_names)
    brief_source: str = "generated"  # generated (as at inference) | golden (ablation) | none
    brief_dropout: float = 0.0  # share of training clips whose brief is left out
    # who writes a generated report's evidence section: experts (their own sentences, given to
    # the LLM as the start of its answer, so the report cannot contradict them) | llm
    report_evidence: str = "experts"
    # the brief's lines where the report's evidence section is given: all (each expert's sentence
    # twice: in the brief and in the section) | unreported ([fused] and experts no section reports)
    brief_lines: str = "all"
    decision_brief: Optional[bool] = None  # null: on iff the classification head is
    # the class decision the [fused] line, the confidence and --use_cls_head read: head (the
    # classification head on the integrated context) | head_and_experts (it and every present
    # expert's read-out as a product of experts; needs lambda_expert_cls > 0) | refit (a logistic
    # regression on the expert summaries, refitted from the training split every epoch: refit_readout.py)
    decision: str = "head"
    decision_refit_c: float = 0.01  # the refitted read-out's inverse ridge strength (scikit-learn's C)
    # the clip's transcript in the prompt (Emotion-LLaMA style), at training and inference alike:
    # the annotation's `text`, else the feature file's; cut to transcript_max_tokens LLM tokens
    use_transcript: bool = False  # opt-in: a pretrained LLM reads words (hero_paper.yaml: true)
    transcript_template: str = 'The person in the video says: "{}"'
    transcript_max_tokens: int = 64
    evidence_max_len: int = 32
    evidence_decoder: EvidenceDecoderConfig = field(default_factory=EvidenceDecoderConfig)
    # the reasoner
    max_txt_len: int = 512
    prompt_template: str = "[INST] {} [/INST]"  # used only when the tokenizer has no chat template
    use_chat_template: bool = True
    system_prompt: Optional[str] = "You are an expert in multimodal emotion analysis."  # null or "": no system turn
    end_sym: str = ""
    llm: LLMConfig = field(default_factory=LLMConfig)
    train_stage: str = "joint"  # joint | observation (the evidence stack alone, no LLM run: README "Staged training")
    init_from: Optional[str] = None  # checkpoint or run folder whose weights a fresh training run starts from
    freeze_experts: bool = False  # the five modality experts and the synergy expert stay as init_from left them
    freeze_evidence_stack: bool = False  # the whole evidence stack stays as init_from left it: only the LLM's LoRA trains

    def check(self) -> None:
        _positive(self, "model", ("visual_dim", "video_dim", "audio_dim", "au_dim", "text_dim", "hidden_dim",
                                  "num_heads", "num_queries", "num_qformer_layers", "num_output_queries",
                                  "ffn_ratio", "sccl_dim", "sccl_temperature", "kl_temperature", "max_txt_len",
                                  "evidence_max_len", "transcript_max_tokens"))
        _nonnegative(self, "model", ("frame_encoder_layers", "lambda_stmil", "lambda_sccl", "lambda_synergy",
                                     "lambda_evidence", "lambda_cls", "lambda_expert_cls", "lambda_kl"))
        if self.context_dim is not None and self.context_dim <= 0:
            raise ConfigError(f"model.context_dim must be null or > 0, got {self.context_dim}")
        if self.hidden_dim % self.num_heads:
            raise ConfigError(f"model.hidden_dim ({self.hidden_dim}) must be divisible by "
                              f"model.num_heads ({self.num_heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 < self.kl_drop_prob < 1.0:
            raise ConfigError(f"model.kl_drop_prob must be in (0, 1), got {self.kl_drop_prob}")
        if not 0.0 <= self.brief_dropout < 1.0:
            raise ConfigError(f"model.brief_dropout must be in [0, 1), got {self.brief_dropout}")
        if not self.label_names or len(set(self.label_names)) != len(self.label_names):
            raise ConfigError(f"model.label_names must be non-empty and unique, got {self.label_names}")
        if self.num_classes is not None and self.num_classes < len(self.label_names):
            raise ConfigError(f"model.num_classes must be null or >= len(model.label_names) = "
                              f"{len(self.label_names)}, got {self.num_classes}")
        _one_of(self, "model", "integration_strategy", ("audio", "dynamic", "concat"))
        _one_of(self, "model", "brief_source", BRIEF_SOURCES)
        _one_of(self, "model", "report_evidence", REPORT_EVIDENCE)
        _one_of(self, "model", "brief_lines", BRIEF_LINES)
        if self.transcript_template.count("{}") != 1:
            raise ConfigError(f"model.transcript_template must contain exactly one '{{}}', got {self.transcript_template!r}")
        if self.prompt_template.count("{}") != 1:
            raise ConfigError(f"model.prompt_template must contain exactly one '{{}}', got {self.prompt_template!r}")
        for sub in (self.stmil, self.evidence_decoder, self.llm):
            sub.check()
        unknown = sorted(set(self.contrast_modalities()) - set(STACK_ORDER))
        if unknown:
            raise ConfigError(f"model.frame_contrast names unknown modalities {unknown}; expected true, false "
                              f"or some of {list(STACK_ORDER)}")
        self._check_heads()

    def contrast_modalities(self) -> tuple[str, ...]:
        """The modalities whose experts read frame contrast (`frame_contrast`: a bool means all or none)."""
        if isinstance(self.frame_contrast, bool):
            return STACK_ORDER if self.frame_contrast else ()
        return tuple(self.frame_contrast)

    def _check_heads(self) -> None:
        """Keys that only work together; the model would refuse them only after loading the LLM."""
        head = (self.lambda_cls > 0 or self.lambda_kl > 0) if self.use_cls_head is None else self.use_cls_head
        for name in ("cls", "kl"):
            if getattr(self, f"lambda_{name}") > 0 and not head:
                raise ConfigError(f"model.lambda_{name} > 0 needs the classification head (model.use_cls_head: true)")
        if self.decision_brief and not head:
            raise ConfigError("model.decision_brief needs the classification head (model.lambda_cls > 0 or "
                              "model.use_cls_head: true)")
        _one_of(self, "model", "decision", DECISIONS)
        if self.decision == "refit" and not head:
            raise ConfigError("model.decision refit needs the classification head (model.lambda_cls > 0): it "
                              "decides until the first refit and keeps training the context the LLM reads")
        if not self.decision_refit_c > 0:
            raise ConfigError(f"model.decision_refit_c must be > 0, got {self.decision_refit_c}")
        if self.decision == "head_and_experts" and (not head or self.lambda_expert_cls <= 0):
            raise ConfigError(f"model.decision {self.decision} needs the classification head and the expert "
                              "read-outs (model.lambda_cls > 0 and model.lambda_expert_cls > 0)")
        if self.evidence_decoder.condition_on_readout and self.lambda_expert_cls <= 0:
            raise ConfigError("model.evidence_decoder.condition_on_readout needs the expert read-outs "
                              "(model.lambda_expert_cls > 0)")
        if self.evidence_max_len > self.evidence_decoder.max_len - 1:
            raise ConfigError(f"model.evidence_max_len must be <= model.evidence_decoder.max_len - 1 = "
                              f"{self.evidence_decoder.max_len - 1} (room for EOS), got {self.evidence_max_len}")
        _one_of(self, "model", "train_stage", TRAIN_STAGES)
        for key in ("freeze_experts", "freeze_evidence_stack"):
            if getattr(self, key) and (self.train_stage != "joint" or not self.init_from):
                raise ConfigError(f"model.{key} keeps weights at what model.init_from loads, in "
                                  "reasoning tuning: set model.init_from (and model.train_stage: joint)")


# arch -> schema of its `model` section; an arch not listed here keeps free-form keys
MODEL_SCHEMAS: dict[str, type] = {"hero": ModelConfig}


# ------------------------------------------------------------------------------ checks
def check_model_source(path: str, key: str) -> None:
    """A model a key names must be a local folder or a hub id: a missing local path otherwise reaches
    Hugging Face as a "repo id" and its error blames the id's form, not the missing folder."""
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise ConfigError(f"{key}={path!r} is a file; give the model's folder (or a hub id)")
        return
    if not (_HUB_ID.match(path) and "--" not in path and ".." not in path and len(path) <= 96
            and not path.startswith((".", "-")) and not path.endswith((".", "-"))):
        raise ConfigError(f"{key}={path!r}: no such local folder, and not a hub id (`name` or `org/name`)")


def model_config(cfg_model: Any) -> ModelConfig:
    """The checked HERO `ModelConfig` of a `model` section (a ModelConfig passes through, re-checked)."""
    return build(ModelConfig, cfg_model, "model.", "model config")


def run_defaults() -> dict[str, Any]:
    """`RunConfig`'s defaults as a plain mapping (what `load_config` puts under a file's `run`)."""
    return dataclasses.asdict(RunConfig())
