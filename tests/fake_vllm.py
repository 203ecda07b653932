"""An engine with the interface abspo uses of vLLM's offline ``LLM``, built on Hugging Face ``generate``.

vLLM cannot be installed here; this stands in for it so that abspo's sync protocol (which adapter version the
engine holds, new LoRA ids after each optimizer step, old ones removed, nothing but adapters sent) is tested. It
loads each ``LoRARequest``'s folder from disk as vLLM would (the weights it serves are the files abspo wrote),
keeps a record of every call, and samples each request with its seed (abspo's keyed sampler).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from peft import PeftModel
from safetensors.torch import load_file

from abspo.weights.models import BaseModel, load_base
from abspo.rl.rollout import generate


class FakeLLM:
    instances: list[FakeLLM] = []

    def __init__(self, model: str, dtype: str, enable_lora: bool, max_lora_rank: int, max_loras: int, **kwargs):
        assert enable_lora, "abspo serves its roles as LoRA requests"
        if max_lora_rank not in (8, 16, 32, 64, 128, 256, 320, 512):  # vLLM's LoRAConfig refuses any other value
            raise ValueError(f"max_lora_rank ({max_lora_rank}) must be one of (8, 16, 32, 64, 128, 256, 320, 512).")
        self.init = {"model": model, "dtype": dtype, "max_lora_rank": max_lora_rank, "max_loras": max_loras, **kwargs}
        self.base, self.tokenizer = load_base(BaseModel(name_or_path=model, dtype=dtype))
        self.model: PeftModel | None = None
        self.loaded: dict[int, dict] = {}  # lora id -> the tensors read from its folder
        self.removed: list[int] = []
        self.requests: list[tuple[str, int, int]] = []  # (lora name, lora id, number of prompts) per generate call
        self.llm_engine = self  # vLLM keeps add_lora / remove_lora on its engine
        # A real engine's kernels sample from a slightly different policy than the trainer's forward: shift the
        # log-probs it reports by this much to stand in for that gap (0: the same numbers as the trainer's).
        self.logprob_shift = float(kwargs.get("logprob_shift", 0.0))
        FakeLLM.instances.append(self)

    def remove_lora(self, lora_id: int) -> bool:
        self.loaded.pop(lora_id)
        self.model.delete_adapter(str(lora_id))
        self.removed.append(lora_id)
        return True

    def _load(self, request) -> None:
        if request.lora_int_id in self.loaded:
            return
        assert len(self.loaded) < self.init["max_loras"], "more adapters than max_loras at once"
        folder = Path(request.lora_path)
        self.loaded[request.lora_int_id] = load_file(folder / "adapter_model.safetensors")
        name = str(request.lora_int_id)
        if self.model is None:
            self.model = PeftModel.from_pretrained(self.base, folder, adapter_name=name)
        else:
            self.model.load_adapter(folder, adapter_name=name)

    def generate(self, prompts, sampling_params, lora_request=None, use_tqdm=True):
        assert lora_request is not None, "abspo always names the role's adapter"
        self._load(lora_request)
        self.model.set_adapter(str(lora_request.lora_int_id))
        self.requests.append((lora_request.lora_name, lora_request.lora_int_id, len(prompts)))
        outputs = []
        for prompt, params in zip(prompts, sampling_params):
            text = self.tokenizer.decode(prompt["prompt_token_ids"])
            wants_logprobs = params.logprobs is not None
            if wants_logprobs:  # after temperature, the distribution the token was drawn from, as abspo asks
                assert self.init.get("logprobs_mode") == "processed_logprobs"
            gen = generate(self.model, self.tokenizer, [text], params.max_tokens, params.temperature, keys=[params.seed],
                           return_logprobs=wants_logprobs)
            # vLLM's shape: per position a dict token id -> Logprob; with logprobs=0 only the sampled token's
            logprobs = [{token: SimpleNamespace(logprob=lp + self.logprob_shift)}
                        for token, lp in zip(gen.completion_ids[0], gen.sampled_logprobs[0])] if wants_logprobs else None
            outputs.append(SimpleNamespace(prompt_token_ids=prompt["prompt_token_ids"], outputs=[
                SimpleNamespace(token_ids=gen.completion_ids[0], text=gen.texts[0], logprobs=logprobs)]))
        return outputs
