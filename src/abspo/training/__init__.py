"""Training: the Lightning module and what one step is made of.

:class:`~abspo.training.module.SelfPlayModule` holds the Lightning hooks and the step, play → judge → learn.
Each concept of that step has its own module: planning and playing the games (:mod:`~abspo.training.play`),
the policy update (:mod:`~abspo.training.update`), cross-field config checks (:mod:`~abspo.training.checks`),
resume (:mod:`~abspo.training.resume`), the run's stop guards, the replicated or lock-step layout, memory
planning, the vLLM rollout backend, checkpoint files, preemption, step logging, and the defender's warm start
(:mod:`~abspo.training.sft`, :mod:`~abspo.training.warm_start`).
"""
