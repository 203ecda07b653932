"""WildGuard (allenai/wildguard) run in-process: all three labels from one greedy answer per exchange.

WildGuard is the judge the published self-play results were trained against (Self-RedTeam): it was
trained for exactly our three questions -- is the request harmful, is the response a refusal, is the
response harmful -- so each exchange costs one short generation (~20 tokens) and needs no fallback.
It is a fine-tuned Mistral-7B-v0.3 (about 15 GB in bf16). The prompt format and the parser live in
:mod:`abspo.judges.formats`, shared with :class:`~abspo.judges.remote.RemoteJudge`; loading and
batched generation in :mod:`abspo.judges.hf_generate`. See ``docs/judges-guard-models.md``.
"""

from __future__ import annotations

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from abspo.judges.formats import WildGuardFormat
from abspo.judges.hf_generate import HFGuardJudge


class WildGuardJudge(HFGuardJudge):
    """WildGuard with ``transformers``.

    Args:
        model: Local folder or hub id (``allenai/wildguard``, gated), loaded on first use; or an
            already-loaded model (then pass ``tokenizer`` too; ``device``/``dtype`` are ignored).
        tokenizer: Folder/hub id or loaded tokenizer; default: the one stored with ``model``.
        device: ``"auto"`` (this process's GPU if any, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
        dtype: ``"auto"`` (bfloat16 on GPU, float32 on CPU), ``"bfloat16"``, ``"float16"``, ``"float32"``.
        batch_size: Exchanges per ``generate`` call.
        max_new_tokens: Generation budget per answer; default 32 (the answer is ~20 tokens).
        local_files_only: Never touch the network: load from a folder or the Hugging Face cache only.
        trust_remote_code: Passed to ``from_pretrained``; WildGuard does not need it.
    """

    def __init__(
        self,
        model: str | PreTrainedModel = "allenai/wildguard",
        tokenizer: str | PreTrainedTokenizerBase | None = None,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 16,
        max_new_tokens: int | None = None,
        local_files_only: bool = False,
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__(
            WildGuardFormat(),
            model=model,
            tokenizer=tokenizer,
            device=device,
            dtype=dtype,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            local_files_only=local_files_only,
            trust_remote_code=trust_remote_code,
        )
