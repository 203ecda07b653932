"""Llama Guard 3 (meta-llama/Llama-Guard-3-8B) run in-process.

Llama Guard answers one question per query -- "is the last turn of this conversation unsafe?" -- so
it fills our three labels differently from WildGuard (details in
:class:`~abspo.judges.formats.LlamaGuardFormat`):

* ``response_harmful`` from the *Agent* assessment of (prompt, response);
* ``prompt_harmful`` from a second query, the *User* assessment of the prompt alone (one per unique
  prompt; ``classify_prompt=False`` skips it and leaves the label ``None``);
* ``refusal`` is not something Llama Guard labels: ``False`` when the response is unsafe (it
  delivered harmful content), otherwise from ``refusal_fallback`` (default ``"rules"``: the
  project's refusal text rules, the ones ``HeuristicJudge`` uses).

Labels left ``None`` make the trainer drop the exchange, which is why both extra sources are on by
default. The prompt format and parser are shared with :class:`~abspo.judges.remote.RemoteJudge`
(:mod:`abspo.judges.formats`); loading and generation with WildGuard (:mod:`abspo.judges.hf_generate`).
"""

from __future__ import annotations

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from abspo.judges.formats import LlamaGuardFormat, RefusalFallback
from abspo.judges.hf_generate import HFGuardJudge


class LlamaGuardJudge(HFGuardJudge):
    """Llama Guard 3 with ``transformers``.

    Args:
        model: Local folder or hub id (``meta-llama/Llama-Guard-3-8B``, gated), loaded on first use;
            or an already-loaded model (then pass ``tokenizer`` too; ``device``/``dtype`` are ignored).
        tokenizer: Folder/hub id or loaded tokenizer; default: the one stored with ``model``.
        device: ``"auto"`` (this process's GPU if any, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
        dtype: ``"auto"`` (bfloat16 on GPU, float32 on CPU), ``"bfloat16"``, ``"float16"``, ``"float32"``.
        batch_size: Queries per ``generate`` call (up to two queries per exchange).
        max_new_tokens: Generation budget per answer; default 10 (``unsafe`` + a category line).
        local_files_only: Never touch the network: load from a folder or the Hugging Face cache only.
        trust_remote_code: Passed to ``from_pretrained``; Llama Guard does not need it.
        classify_prompt: Also ask Llama Guard about the prompt alone, to fill ``prompt_harmful``.
        refusal_fallback: Source of the ``refusal`` label where the response is not unsafe:
            ``"rules"`` (default: the project's refusal rules, as in ``HeuristicJudge``), an import
            path or function ``(prompt, response) -> bool | None``,
            a :class:`~abspo.judges.base.Judge` (its ``refusal`` label is used), or ``None``.
    """

    def __init__(
        self,
        model: str | PreTrainedModel = "meta-llama/Llama-Guard-3-8B",
        tokenizer: str | PreTrainedTokenizerBase | None = None,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 16,
        max_new_tokens: int | None = None,
        local_files_only: bool = False,
        trust_remote_code: bool = False,
        classify_prompt: bool = True,
        refusal_fallback: RefusalFallback = "rules",
    ) -> None:
        super().__init__(
            LlamaGuardFormat(classify_prompt=classify_prompt, refusal_fallback=refusal_fallback),
            model=model,
            tokenizer=tokenizer,
            device=device,
            dtype=dtype,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            local_files_only=local_files_only,
            trust_remote_code=trust_remote_code,
        )
