"""Adam with DreamerV2's weight decay, gradient clipping, warm-up and non-finite skipping.

One :class:`Optimizer` per loss (model, actor, critic, MAE), as in DreamerV2 and MWM
(Adam eps 1e-5, clip 100, weight decay 1e-6; docs/HYPERPARAMETERS.md).
"""

from typing import Any, Iterable

import torch
from torch import nn

from mwm import distributed

# Adam param-group keys that describe how an update is computed, not training state; they
# come from the config, not the checkpoint (so optimiser settings may change on resume).
_FORM_KEYS = ("lr", "weight_decay", "fused", "capturable", "foreach", "differentiable", "eps", "betas")


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
    consecutive skipped updates (0 after a good update); it is updated in place on the
    device, so reading it (``int(...)``) is the only sync. ``updates`` (the warm-up
    counter) is a host int counting updates, skipped or not.

    An update has a host half, :meth:`schedule` (this update's warm-up learning rate,
    and the counter), and a device half (gradients, clipping, decay, Adam). By default
    :meth:`step` does both. With ``capturable=True`` (the CUDA-graph path,
    :mod:`mwm.speed`) :meth:`step` is the device half only, safe to capture in a CUDA
    graph and replay: the learning rate is a device tensor that :meth:`schedule`
    writes, and the caller calls :meth:`schedule` once before every update, outside the
    graph. The decoupled decay is then applied by one ``_foreach_mul_`` by ``1 - wd``
    (1 when the update is skipped) just before the fused Adam step, which is the order
    AdamW uses, so both forms compute the same update.

    Args:
        name: prefix of the metric names, e.g. "model".
        params: parameters to optimise (those without ``requires_grad`` are dropped).
        lr: peak learning rate.
        eps: Adam epsilon.
        clip: max global gradient norm (0 or less: no clipping, the norm is still reported).
        wd: weight decay per update.
        warmup: number of updates of linear learning-rate warm-up (0: none).
        fused: fused Adam; None picks it on CUDA.
        capturable: graph-safe form (see above); needs fused Adam.
    """

    def __init__(self, name: str, params: Iterable[nn.Parameter], lr: float, eps: float = 1e-5,
                 clip: float = 100.0, wd: float = 1e-6, warmup: int = 0, fused: bool | None = None,
                 capturable: bool = False):
        self.name = name
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError(f"optimizer '{name}' got no trainable parameters; check which module it is given")
        if lr <= 0:
            raise ValueError(f"optimizer '{name}' needs a positive learning rate, got {lr}")
        if warmup < 0 or wd < 0:
            raise ValueError(f"optimizer '{name}': warmup ({warmup}) and wd ({wd}) must not be negative")
        device = self.params[0].device
        self.fused = device.type == "cuda" if fused is None else fused
        if capturable and not self.fused:
            raise ValueError(f"optimizer '{name}': the CUDA-graph form needs fused Adam; "
                            "set speed.fused_optim true or speed.cuda_graph false")
        self.capturable = capturable
        self.lr = lr
        self.clip = clip
        self.wd = wd
        self.warmup = warmup
        self.updates = 0
        self.nonfinite_in_row = torch.zeros((), dtype=torch.int64, device=device)
        if capturable:
            self._lr = torch.full((), float(lr), dtype=torch.float32, device=device)  # written by schedule()
            self._keep = torch.full((), 1.0 - wd, dtype=torch.float32, device=device)  # decay factor
            self.adam = torch.optim.AdamW(self.params, lr=self._lr, eps=eps, weight_decay=0.0, fused=True,
                                          capturable=True)
        else:
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

    def schedule(self) -> float:
        """The host half of an update: set this update's learning rate, count the update.

        Called by :meth:`step` itself unless ``capturable``; then the caller calls it
        once before each update (a kernel that writes the device learning rate, no sync).
        Returns the learning rate set.
        """
        lr = self.current_lr()
        if self.capturable:
            self._lr.fill_(lr)
        else:
            for group in self.adam.param_groups:
                group["lr"] = lr
                group["weight_decay"] = self.wd / lr
        self.updates += 1
        return lr

    def step(self, loss: torch.Tensor, retain_graph: bool = False) -> dict[str, torch.Tensor]:
        """One update from a scalar ``loss``; returns {name/loss, name/grad_norm} as device tensors.

        ``name/grad_norm`` is the global gradient norm before clipping. With
        ``capturable`` this is the device half only (see :meth:`schedule`).
        """
        if not self.capturable:
            self.schedule()
        with_grad = self._compute_grads(loss, retain_graph)
        loss = distributed.average_gradients(with_grad, loss)  # over ranks (torchrun); one process: as is
        if with_grad:
            max_norm = self.clip if self.clip > 0 else float("inf")
            norm = torch.nn.utils.clip_grad_norm_(with_grad, max_norm, foreach=True)
        else:
            norm = torch.zeros((), device=loss.device)
        finite = torch.isfinite(norm) & torch.isfinite(loss.detach())
        if self.capturable:
            if with_grad:  # decoupled decay p <- (1 - wd) p, skipped with the update
                keep = torch.where(finite, self._keep, torch.ones_like(self._keep))
                with torch.no_grad():
                    torch._foreach_mul_(with_grad, keep)
            self.adam.found_inf = (~finite).to(torch.float32)
            self.adam.step()
        elif self.fused:
            self.adam.found_inf = (~finite).to(torch.float32)
            self.adam.step()
        elif bool(finite):
            self.adam.step()
        self.adam.zero_grad(set_to_none=True)
        bad = (~finite).to(torch.int64)
        self.nonfinite_in_row.add_(1).mul_(bad)  # in place: a captured graph keeps its address
        return {f"{self.name}/loss": loss.detach(), f"{self.name}/grad_norm": norm.detach()}

    def state_dict(self) -> dict[str, Any]:
        """Adam state, the warm-up counter and the non-finite streak (learning rates as floats)."""
        adam = self.adam.state_dict()
        adam["param_groups"] = [{**group, "lr": self.current_lr()} if self.capturable else group
                                for group in adam["param_groups"]]
        return {"adam": adam, "updates": self.updates,
                "nonfinite_in_row": self.nonfinite_in_row.detach().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved, by this or by the other form.

        The training state (moments, step counts, counters) comes from ``state``; how
        the update is computed (fused, capturable, the learning-rate tensor) stays this
        optimizer's, so a checkpoint written on one device or form loads into another.
        """
        own = [{key: group[key] for key in _FORM_KEYS if key in group} for group in self.adam.param_groups]
        adam = dict(state["adam"])
        adam["param_groups"] = [{**saved, **form} for saved, form in zip(adam["param_groups"], own)]
        self.adam.load_state_dict(adam)  # copies the groups: put this optimizer's own objects back
        for group, form in zip(self.adam.param_groups, own):
            group.update(form)
        self.updates = int(state["updates"])
        self.nonfinite_in_row.copy_(state["nonfinite_in_row"])
