"""Adam with DreamerV2's weight decay, gradient clipping, warm-up and non-finite skipping.

One :class:`Optimizer` per loss (model, actor, critic, MAE), as in DreamerV2 and MWM
(Adam eps 1e-5, clip 100, weight decay 1e-6; DESIGN.md Sec. 2-3).
"""

from typing import Any, Iterable

import torch
from torch import nn

from mwm.errors import UserError


class Optimizer:
    """Adam(W) over ``params`` with the update DreamerV2 applies each step:

    1. gradients of ``loss`` with respect to these parameters only
       (``backward(inputs=params)``: a loss that also reaches other modules, such as the
       actor loss through the world model, leaves their ``.grad`` untouched);
    2. global gradient-norm clipping at ``clip``;
    3. decoupled weight decay ``p <- (1 - wd) * p``, not scaled by the learning rate
       (DreamerV2's optimiser multiplies every variable by 1 - wd); done inside AdamW
       by setting its decay coefficient to ``wd / lr_t`` so that ``lr_t * coef = wd``;
    4. Adam with learning rate ``lr_t = lr * min(1, k / warmup)`` on the k-th update
       (k counts from 1, so no update has learning rate 0).

    Parameters the loss does not reach get no gradient and are left alone that update
    (no decay either: AdamW skips parameters without ``.grad``).

    A non-finite loss or gradient norm skips the whole update: parameters, Adam moments
    and step counts stay as they were and the gradients are dropped. How the skip is
    decided without a host sync:

    - fused Adam (default on CUDA): the finite flag is handed to the fused kernel as
      its ``found_inf`` tensor (the mechanism ``torch.amp.GradScaler`` uses), which
      skips the update on the device. No host synchronisation.
    - otherwise (default on CPU, where a sync costs nothing): the flag is read on the
      host (one sync) and ``step`` is not called.

    ``nonfinite_in_row`` is a 0-d int64 tensor on the parameters' device counting
    consecutive skipped updates (0 after a good update); it is updated on the device,
    so reading it (``int(...)``) is the only sync. ``updates`` (the warm-up counter) is
    a host int counting calls to :meth:`step`, skipped or not.

    Args:
        name: prefix of the metric names, e.g. "model".
        params: parameters to optimise (those without ``requires_grad`` are dropped).
        lr: peak learning rate.
        eps: Adam epsilon.
        clip: max global gradient norm (0 or less: no clipping, the norm is still reported).
        wd: weight decay per update.
        warmup: number of updates of linear learning-rate warm-up (0: none).
        fused: fused Adam; None picks it on CUDA.
    """

    def __init__(self, name: str, params: Iterable[nn.Parameter], lr: float, eps: float = 1e-5,
                 clip: float = 100.0, wd: float = 1e-6, warmup: int = 0, fused: bool | None = None):
        self.name = name
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise UserError(f"optimizer '{name}' got no trainable parameters; check which module it is given")
        if lr <= 0:
            raise UserError(f"optimizer '{name}' needs a positive learning rate, got {lr}")
        if warmup < 0 or wd < 0:
            raise UserError(f"optimizer '{name}': warmup ({warmup}) and wd ({wd}) must not be negative")
        device = self.params[0].device
        self.fused = device.type == "cuda" if fused is None else fused
        self.lr = lr
        self.clip = clip
        self.wd = wd
        self.warmup = warmup
        self.updates = 0
        self.nonfinite_in_row = torch.zeros((), dtype=torch.int64, device=device)
        self.adam = torch.optim.AdamW(self.params, lr=lr, eps=eps, weight_decay=wd / lr,
                                      fused=self.fused or None)

    def current_lr(self) -> float:
        """Learning rate of the next update (warm-up applied)."""
        if self.warmup == 0:
            return self.lr
        return self.lr * min(1.0, (self.updates + 1) / self.warmup)

    def _compute_grads(self, loss: torch.Tensor, retain_graph: bool) -> list[nn.Parameter]:
        """Fill ``.grad`` of this optimizer's parameters from ``loss``; return those that got one."""
        self.adam.zero_grad(set_to_none=True)
        loss.backward(inputs=self.params, retain_graph=retain_graph)
        return [p for p in self.params if p.grad is not None]

    def step(self, loss: torch.Tensor, retain_graph: bool = False) -> dict[str, torch.Tensor]:
        """One update from a scalar ``loss``; returns {name/loss, name/grad_norm} as device tensors.

        ``name/grad_norm`` is the global gradient norm before clipping.
        """
        lr = self.current_lr()
        for group in self.adam.param_groups:
            group["lr"] = lr
            group["weight_decay"] = self.wd / lr
        with_grad = self._compute_grads(loss, retain_graph)
        if with_grad:
            max_norm = self.clip if self.clip > 0 else float("inf")
            norm = torch.nn.utils.clip_grad_norm_(with_grad, max_norm, foreach=True)
        else:
            norm = torch.zeros((), device=loss.device)
        finite = torch.isfinite(norm) & torch.isfinite(loss.detach())
        if self.fused:
            self.adam.found_inf = (~finite).to(torch.float32)
            self.adam.step()
        elif bool(finite):
            self.adam.step()
        self.adam.zero_grad(set_to_none=True)
        self.updates += 1
        bad = (~finite).to(torch.int64)
        self.nonfinite_in_row = (self.nonfinite_in_row + 1) * bad
        return {f"{self.name}/loss": loss.detach(), f"{self.name}/grad_norm": norm.detach()}

    def state_dict(self) -> dict[str, Any]:
        """Adam state, the warm-up counter and the non-finite streak."""
        return {"adam": self.adam.state_dict(), "updates": self.updates,
                "nonfinite_in_row": self.nonfinite_in_row.detach().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.adam.load_state_dict(state["adam"])
        self.updates = int(state["updates"])
        self.nonfinite_in_row = state["nonfinite_in_row"].to(self.nonfinite_in_row.device).clone()
