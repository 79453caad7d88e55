"""Run a gradient transform (or a chain) inside any ``torch.optim`` optimizer's ``step``.

``attach(transform, optimizer)`` hooks the transform into ``optimizer.step`` so a user's own loop,
a Lightning ``Trainer`` or an HF ``Trainer`` runs it exactly once per optimizer update, on the
final gradient, whichever way ``step`` is called:

- ``optimizer.step()``: a step pre-hook applies the transform to the gradients already there.
- ``optimizer.step(closure)`` (Lightning, LBFGS-style loops): backward runs *inside* the closure,
  after the pre-hook. The pre-hook therefore replaces the closure by one that runs it and then
  applies the transform, so the transform sees the closure's fresh gradients.
- ``torch.amp.GradScaler``: ``scaler.step(optimizer)`` unscales the gradients, then calls
  ``optimizer.step()`` only when they are finite; a skipped step never reaches the hook, so the
  transform does not run and its ``t`` does not advance. Optimizers that unscale inside their own
  fused kernel (``fused=True``; the scaler sets ``optimizer.grad_scale`` / ``optimizer.found_inf``)
  are handled too: the hook unscales the gradients itself (and clears ``grad_scale`` so the kernel
  does not unscale twice), and skips the transform when ``found_inf`` is set.
- Gradient accumulation: the hooks fire only on ``step``, so once per update, after the last
  micro-batch's backward.

Stage ``update`` transforms run in a step post-hook, after the weights have moved.

The transforms' state (and the number of updates seen, ``UpdateInfo.step``) is written into
``optimizer.state_dict()`` under the key ``"largebatch"`` by a state-dict post-hook and read back
by ``optimizer.load_state_dict`` (a load pre-hook takes the entry out, a load post-hook restores
it once the optimizer itself has loaded), so any trainer's checkpoint of the optimizer carries it.

Transforms that need the micro-batches themselves (an overridden ``after_microbatch`` or
``loss_weights``) cannot be driven from ``step`` alone; ``attach`` refuses them with a message.

Example::

    >>> import torch
    >>> from largebatch.gradient.base import GradientTransform
    >>> class Halve(GradientTransform):
    ...     name = "halve"
    ...     def __init__(self, params):
    ...         self.params = list(params)
    ...     def apply_(self, grads, info):
    ...         torch._foreach_mul_([g for g in grads if g is not None], 0.5)
    >>> w = torch.nn.Parameter(torch.zeros(2))
    >>> opt = torch.optim.SGD([w], lr=1.0)
    >>> handle = Halve([w]).attach(opt)
    >>> def closure():
    ...     opt.zero_grad()
    ...     (w - 4.0).pow(2).sum().backward()     # gradient -8 per entry
    ...     return 0.0
    >>> _ = opt.step(closure)
    >>> w.tolist()                                # -lr * 0.5 * (-8)
    [4.0, 4.0]
    >>> sorted(opt.state_dict()["largebatch"])
    ['halve']
    >>> handle.remove()
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle

from largebatch.gradient.base import GradientTransform, TransformChain, UpdateInfo

STATE_KEY = "largebatch"

# The attachment keys in use per optimizer: two attachments must not write the same entry.
_ATTACHED: weakref.WeakKeyDictionary[torch.optim.Optimizer, set[str]] = weakref.WeakKeyDictionary()


def _needs_microbatches(t: GradientTransform) -> bool:
    cls = type(t)
    return (
        cls.after_microbatch is not GradientTransform.after_microbatch
        or cls.loss_weights is not GradientTransform.loss_weights
    )


class AttachHandle:
    """What :func:`attach` returns: ``remove()`` takes every hook off the optimizer.

    Attributes:
        chain: the transforms the optimizer runs, as a :class:`TransformChain`.
        key: the entry of ``optimizer.state_dict()["largebatch"]`` holding their state.
        step: optimizer updates completed through this attachment (``UpdateInfo.step``).
    """

    def __init__(
        self,
        chain: TransformChain,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler | None,
        key: str,
    ) -> None:
        self.chain = chain
        self.key = key
        self.step = 0
        self.scaler = scaler
        self._optimizer = weakref.ref(optimizer)
        self._skip = False  # set by the pre-hook when a fused optimizer found inf gradients
        self._loaded: dict[str, Any] | None = None
        self._handles: list[RemovableHandle] = [
            optimizer.register_step_pre_hook(self._pre_step),
            optimizer.register_step_post_hook(self._post_step),
            optimizer.register_state_dict_post_hook(self._state_dict_post),
            optimizer.register_load_state_dict_pre_hook(self._load_pre),
            optimizer.register_load_state_dict_post_hook(self._load_post),
        ]

    # -- step ------------------------------------------------------------------------------------

    def _info(self, optimizer: torch.optim.Optimizer) -> UpdateInfo:
        return UpdateInfo(step=self.step, lr=float(optimizer.param_groups[0]["lr"]))

    def _check_unscaled(self, optimizer: torch.optim.Optimizer) -> None:
        """With a scaler given: refuse a plain ``optimizer.step()`` on still-scaled gradients."""
        scaler = self.scaler
        if scaler is None or not scaler.is_enabled() or hasattr(optimizer, "found_inf"):
            return
        states = getattr(scaler, "_per_optimizer_states", None)
        stage = None if states is None else states[id(optimizer)].get("stage")
        if stage is not None and getattr(stage, "name", "") == "READY":
            raise RuntimeError(
                "optimizer.step() was called on gradients the GradScaler has not unscaled; "
                "call scaler.step(optimizer) (or scaler.unscale_(optimizer) first)"
            )

    @torch.no_grad()
    def _unscale_fused(self, optimizer: torch.optim.Optimizer) -> bool:
        """Fused-kernel AMP path; returns False when the scaler found inf/nan gradients."""
        found_inf = getattr(optimizer, "found_inf", None)
        if found_inf is None:
            return True
        scale = getattr(optimizer, "grad_scale", None)
        if scale is not None:
            grads = [
                p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None
            ]
            if grads:
                torch._foreach_div_(grads, scale.to(grads[0].device))
            optimizer.grad_scale = None  # type: ignore[attr-defined]
        return not bool(found_inf.item())

    def _run(self, optimizer: torch.optim.Optimizer) -> None:
        self._check_unscaled(optimizer)
        self._skip = not self._unscale_fused(optimizer)
        if not self._skip:
            self.chain.before_step(self._info(optimizer))

    def _pre_step(
        self, optimizer: torch.optim.Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        # ``args`` holds the optimizer itself first (torch passes step's full positional args).
        lead = 1 if args and args[0] is optimizer else 0
        closure = kwargs.get("closure", args[lead] if len(args) > lead else None)
        if closure is None:
            self._run(optimizer)
            return None
        calls = 0

        def closure_then_transform() -> Any:
            nonlocal calls
            calls += 1
            if calls > 1:
                raise RuntimeError(
                    "the step's closure ran twice in one update (LBFGS-style); an attached "
                    "transform acts once per update and cannot follow repeated evaluations"
                )
            loss = closure()
            self._run(optimizer)
            return loss

        if "closure" in kwargs:
            return args, {**kwargs, "closure": closure_then_transform}
        return (*args[:lead], closure_then_transform, *args[lead + 1 :]), kwargs

    def _post_step(
        self, optimizer: torch.optim.Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        if self._skip:
            self._skip = False
            return
        self.chain.after_step(self._info(optimizer))
        self.step += 1

    # -- state -----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "transforms": self.chain.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.chain.load_state_dict(state["transforms"])

    def _state_dict_post(
        self, optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]
    ) -> dict[str, Any]:
        state_dict.setdefault(STATE_KEY, {})[self.key] = self.state_dict()
        return state_dict

    def _load_pre(
        self, optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]
    ) -> dict[str, Any]:
        entries = state_dict.get(STATE_KEY)
        if not entries or self.key not in entries:
            self._loaded = None
            warnings.warn(
                f"optimizer.load_state_dict: no state for the attached transforms '{self.key}' "
                "(a checkpoint saved before attach?); they keep their current state",
                stacklevel=3,
            )
            return state_dict
        self._loaded = entries[self.key]
        rest = {k: v for k, v in entries.items() if k != self.key}
        out = dict(state_dict)
        if rest:
            out[STATE_KEY] = rest
        else:
            out.pop(STATE_KEY)
        return out

    def _load_post(self, optimizer: torch.optim.Optimizer) -> None:
        if self._loaded is not None:
            self.load_state_dict(self._loaded)
            self._loaded = None

    # -- detach ----------------------------------------------------------------------------------

    def remove(self) -> None:
        """Detach: remove every hook; the transforms keep their state."""
        for h in self._handles:
            h.remove()
        self._handles = []
        optimizer = self._optimizer()
        if optimizer is not None and optimizer in _ATTACHED:
            _ATTACHED[optimizer].discard(self.key)

    def __enter__(self) -> AttachHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def attach(
    transform: GradientTransform | TransformChain,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None = None,
) -> AttachHandle:
    """Run ``transform`` once per ``optimizer.step`` (see the module docstring for every case).

    Args:
        transform: a :class:`GradientTransform` or a :class:`TransformChain` (run in list order).
        optimizer: any ``torch.optim.Optimizer``.
        scaler: the ``torch.amp.GradScaler`` the loop steps through, if any. Not needed for
            correctness (a skipped step never calls ``optimizer.step``); given, it makes a plain
            ``optimizer.step()`` on still-scaled gradients an error instead of a silent mistake.

    Returns:
        an :class:`AttachHandle`; ``handle.remove()`` detaches.
    """
    chain = transform if isinstance(transform, TransformChain) else TransformChain([transform])
    refused = [t.name for t in chain.transforms if _needs_microbatches(t)]
    if refused:
        raise ValueError(
            f"transforms {refused} act per micro-batch (after_microbatch / loss_weights) and "
            "cannot be attached to optimizer.step; call the chain's hooks from your loop "
            "(see largebatch.gradient.base) or train with the engine"
        )
    key = "+".join(chain.order)
    keys = _ATTACHED.setdefault(optimizer, set())
    if key in keys:
        raise ValueError(f"transforms '{key}' are already attached to this optimizer")
    keys.add(key)
    return AttachHandle(chain, optimizer, scaler, key)
