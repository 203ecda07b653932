"""In-process guard models with ``transformers``: loading, batched greedy generation, the shared judge.

Why this shape: WildGuard and Llama Guard differ only in what they are asked and how their answers
are read (:mod:`abspo.judges.formats`). Everything else -- resolving the device, loading weights,
left-padded batched greedy decoding, counting unreadable answers -- is the same, so it lives here once
and :class:`~abspo.judges.wildguard.WildGuardJudge` / :class:`~abspo.judges.llama_guard.LlamaGuardJudge`
only choose a format and defaults.

Choices worth knowing:

* Greedy decoding and a handful of new tokens: a guard model's answer is a label, and labels must not
  change from one call to the next.
* Prompts are tokenised with ``add_special_tokens=False``: the published formats already contain the
  BOS token as text, as in the models' own usage examples.
* Decoding is the training rollouts' engine at temperature 0 (:func:`abspo.rl.rollout.generate_greedy`): left
  padding by hand (a tokenizer passed in for colocation may be shared with the policy, and it must not be
  mutated), batches of length-sorted queries (longest first, so an out-of-memory error shows on the first
  batch rather than late in a run), answers put back in input order and cut at the end-of-sequence token.
* The model is loaded on first use, not in ``__init__``: LightningCLI builds the judge before the
  strategy has set each process's CUDA device, and ``device="cuda"`` must mean *this rank's* GPU.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from abspo.judges.base import Judge, Verdict
from abspo.judges.formats import GuardFormat
from abspo.rl.rollout import generate_greedy

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(device: str) -> torch.device:
    """``"auto"`` = the current CUDA device if there is one, else CPU; ``"cuda:1"`` etc. pass through."""
    if device == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``"auto"`` = bfloat16 on CUDA (guard models are published in bf16), float32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[dtype]


def _load_error(arg: str, name: str, local_files_only: bool, err: Exception) -> OSError:
    if name.startswith(("/", ".", "~")) and not Path(name).expanduser().exists():
        return OSError(f"the judge's `{arg}={name!r}` is not an existing folder; fix the path")
    hint = (
        "local_files_only=True: only a local folder or the Hugging Face cache is used; download it first "
        "(`huggingface-cli download <id>`) or set local_files_only=False"
        if local_files_only
        else "pass a local folder, or a hub id that is cached or downloadable from here (WildGuard and "
        "Llama Guard are gated: accept the licence on huggingface.co and `huggingface-cli login`)"
    )
    reason = str(err).rstrip(". ")
    return OSError(f"could not load the judge's {arg} from {name!r}: {reason}. Fix `{arg}=`: {hint}")


def load_model(
    name: str, *, device: torch.device, dtype: torch.dtype, local_files_only: bool, trust_remote_code: bool
) -> PreTrainedModel:
    """Load a causal LM for inference only: eval mode, no gradients, placed on ``device``."""
    try:
        model = AutoModelForCausalLM.from_pretrained(
            name,
            dtype=dtype,
            device_map=str(device),
            local_files_only=local_files_only,
            trust_remote_code=trust_remote_code,
        )
    except OSError as err:
        raise _load_error("model", name, local_files_only, err) from err
    return model.requires_grad_(False).eval()


def load_tokenizer(
    name: str, *, local_files_only: bool, trust_remote_code: bool, arg: str = "tokenizer"
) -> PreTrainedTokenizerBase:
    """Load a tokenizer; ``arg`` names the judge argument that gave ``name`` (for the error message)."""
    try:
        return AutoTokenizer.from_pretrained(
            name, local_files_only=local_files_only, trust_remote_code=trust_remote_code
        )
    except OSError as err:
        raise _load_error(arg, name, local_files_only, err) from err


class HFGuardJudge(Judge):
    """A guard model run in-process; the format decides what it is asked and how answers are read.

    ``model`` is a local folder or a hub id (loaded on first use), or an already-loaded model to
    colocate the judge with other models on one GPU; then ``tokenizer`` must be given too, and
    ``device``/``dtype`` are ignored (the model stays where it is and is used as it is: pass it in
    eval mode). ``unparsed`` counts model answers that did not follow the format since construction;
    their unreadable fields are ``None``.
    """

    def __init__(
        self,
        format: GuardFormat,
        *,
        model: str | PreTrainedModel,
        tokenizer: str | PreTrainedTokenizerBase | None,
        device: str,
        dtype: str,
        batch_size: int,
        max_new_tokens: int | None,
        local_files_only: bool,
        trust_remote_code: bool,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        if max_new_tokens is not None and max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1 (or null for the format's default)")
        if not isinstance(dtype, torch.dtype) and dtype != "auto" and dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r} is not supported; use 'auto' or one of {sorted(DTYPES)}")
        if device.split(":")[0] not in DEVICES:
            raise ValueError(f"device={device!r} is not supported; use one of {list(DEVICES)} (or e.g. 'cuda:1')")
        loaded = isinstance(model, PreTrainedModel)
        if loaded and not isinstance(tokenizer, PreTrainedTokenizerBase):
            raise ValueError("tokenizer= (a loaded tokenizer) is required when model= is an already-loaded model")
        self.format = format
        self.model_name = model.name_or_path if loaded else str(model)
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens or format.default_max_new_tokens
        self.local_files_only = local_files_only
        self.trust_remote_code = trust_remote_code
        self._model: PreTrainedModel | None = model if loaded else None
        self._tokenizer_arg = tokenizer
        self._tokenizer: PreTrainedTokenizerBase | None = (
            tokenizer if isinstance(tokenizer, PreTrainedTokenizerBase) else None
        )
        self.unparsed = 0
        """Answers that did not follow the format (their unreadable fields are None), cumulative."""

    def load(self) -> None:
        """Load the model and tokenizer now (otherwise done on the first call)."""
        if self._tokenizer is None:
            separate = isinstance(self._tokenizer_arg, str)
            self._tokenizer = load_tokenizer(
                self._tokenizer_arg if separate else self.model_name,
                local_files_only=self.local_files_only,
                trust_remote_code=self.trust_remote_code,
                arg="tokenizer" if separate else "model",
            )
        if self._model is None:
            device = resolve_device(self.device)
            self._model = load_model(
                self.model_name,
                device=device,
                dtype=resolve_dtype(self.dtype, device),
                local_files_only=self.local_files_only,
                trust_remote_code=self.trust_remote_code,
            )

    def _generate(self, texts: list[str]) -> list[str]:
        """The model boundary: rendered prompts in, raw answers out."""
        self.load()
        return generate_greedy(
            self._model, self._tokenizer, texts, batch_size=self.batch_size, max_new_tokens=self.max_new_tokens
        )

    def judge_batch(
        self, prompts: list[str], responses: list[str], seed_harmful: list[bool | None]
    ) -> list[Verdict]:
        """Label exchanges with the guard model; ``seed_harmful`` is not used (the model judges the prompt)."""
        queries = self.format.queries(prompts, responses)
        outputs = self._generate([q.text for q in queries])
        verdicts, unparsed = self.format.verdicts(prompts, responses, outputs)
        self.unparsed += unparsed
        return verdicts
