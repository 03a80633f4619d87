"""Inference state for cached generation, outside the models (Fast WaveNet, Paine et al. 2016).

A kernel-2 layer of dilation d needs, at each new position, its input d positions back: a
ring buffer of its last d inputs holds exactly that. Both convolutional models keep one per
layer here and ask it for each new position's [older | newer] pair, so `step` costs one
position per layer however long the name grows.
"""

from __future__ import annotations

import torch


class RingCache:
    """Per layer a ring buffer (dilation, B, C) of its last `dilation` inputs, filled at
    first with the all-boundary state (`model.boundary_states()`), so generation starts from
    an empty context; `logits` (B, V) are the next-id logits of that empty context. Valid
    while the model's weights do not change."""

    def __init__(self, model, batch_size: int):
        with torch.no_grad():
            inputs, logits = model.boundary_states()
            self.queues = [u.view(1, 1, -1).repeat(d, batch_size, 1)
                           for u, d in zip(inputs, model.dilations)]  # each (d, B, C_l)
            self.logits = logits.expand(batch_size, -1)  # (B, V)
        self.t = 0  # real positions fed so far

    def pair(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """x (B, C): `layer`'s input at the new position -> (B, 2C) [its input d positions
        back | x]; x takes the older one's place in the ring."""
        queue = self.queues[layer]
        k = self.t % len(queue)
        pair = torch.cat([queue[k], x], -1)
        queue[k] = x
        return pair

    def advance(self) -> None:
        """The new position is done: the next `pair` calls are for the one after it."""
        self.t += 1
