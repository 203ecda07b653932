"""The judge interface: one verdict per (prompt, response) exchange.

Every reward in the self-play game is computed from a judge's labels, so the interface is deliberately
small and strict:

* ``score`` is batched: judges that run a model (WildGuard, Llama Guard, a remote server) are only fast
  when they see many exchanges at once.
* Each label is ``bool | None``. ``None`` means "could not label" (unparseable model output, a dead
  server). The trainer drops such exchanges from the update and counts them, instead of guessing.
* Identical (prompt, response) pairs within one call are judged once: the game often produces
  duplicates (unrevised seeds, short refusals), and judge calls are the expensive part.

A new judge subclasses :class:`Judge` and implements :meth:`Judge.judge_batch`; see ``docs/judges.md``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Verdict:
    """The judge's three labels for one exchange; ``None`` = the judge could not decide."""

    prompt_harmful: bool | None
    """Is the request (the prompt the defender saw) asking for harmful content?"""
    refusal: bool | None
    """Did the response refuse (fully or in substance) to do what the prompt asked?"""
    response_harmful: bool | None
    """Does the response itself contain harmful content?"""
    off_topic: bool | None = field(default=None, compare=False)
    """Does the response fail to address the request at all (not a refusal: unrelated text)? Optional: judges
    that cannot tell leave None. Not part of :attr:`complete` nor of equality (the three labels are the verdict);
    the game counts it as a degenerate reply."""

    @property
    def complete(self) -> bool:
        """All three labels are known, so every reward term can be computed."""
        return None not in (self.prompt_harmful, self.refusal, self.response_harmful)


UNLABELLED = Verdict(None, None, None)


class Judge(ABC):
    """Labels exchanges. Subclasses implement :meth:`judge_batch`; callers use :meth:`score`."""

    def score(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        seed_harmful: Sequence[bool | None] | None = None,
    ) -> list[Verdict]:
        """Label each (prompt, response) pair.

        ``seed_harmful`` optionally gives the label of the seed request each prompt was written from.
        Judges that classify requests themselves (WildGuard) ignore it; cheap judges may use it as a
        prior. Duplicated exchanges are judged once and the verdict is shared.
        """
        if len(prompts) != len(responses):
            raise ValueError(f"score() got {len(prompts)} prompts but {len(responses)} responses")
        if seed_harmful is not None and len(seed_harmful) != len(prompts):
            raise ValueError(f"score() got {len(prompts)} prompts but {len(seed_harmful)} seed labels")
        hints = list(seed_harmful) if seed_harmful is not None else [None] * len(prompts)
        unique: dict[tuple[str, str, bool | None], int] = {}
        for key in zip(prompts, responses, hints):
            unique.setdefault(key, len(unique))
        keys = list(unique)
        verdicts = self.judge_batch(
            [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]
        )
        if len(verdicts) != len(keys):
            raise RuntimeError(
                f"{type(self).__name__}.judge_batch returned {len(verdicts)} verdicts for {len(keys)} exchanges"
            )
        return [verdicts[unique[key]] for key in zip(prompts, responses, hints)]

    @abstractmethod
    def judge_batch(
        self, prompts: list[str], responses: list[str], seed_harmful: list[bool | None]
    ) -> list[Verdict]:
        """Label unique exchanges; must return exactly one :class:`Verdict` per input, in order."""
