"""The RL maths on tensors and token ids, with no notion of roles, judges or Lightning.

Estimators and losses (:mod:`~abspo.rl.algorithms`), per-token log-probabilities (:mod:`~abspo.rl.logprobs`),
micro-batching, numeric precision, sampling (:mod:`~abspo.rl.rollout`, the one generation engine), and the
degeneracy and diversity measures of sampled text. Pure functions, tested against hand-computed values.
"""
