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

**Learning rates.** A transform gets ``UpdateInfo(step, lr)`` with ``lr`` = group 0's learning
rate; when the parameter groups' learning rates differ, ``info.param_lrs`` maps every parameter
to its own group's and ``info.lr_of(p)`` reads it. So ``GradientNoise(placement="update")`` moves
a parameter of group ``g`` by ``w <- w - lr_g sigma_t n_t`` (variance ``lr_g^2 sigma_t^2`` per
entry), the learning rate its gradient is stepped with.

**State, in either order.** The transforms' state (and the number of updates seen,
``UpdateInfo.step``) is written into ``optimizer.state_dict()`` by a state-dict post-hook as
``{attachment key: {"step": ..., "transforms": {name: state}}}``, in two places that hold the
same object (``torch.save`` writes it once):

- the top-level key ``"largebatch"``;
- the same key in ``state_dict["param_groups"][0]``. ``torch.optim.Optimizer.load_state_dict``
  drops unknown top-level keys but keeps every key of a parameter group, so an optimizer that
  loads a checkpoint *before* anything is attached (the HF ``Trainer`` loads the optimizer before
  a callback's ``on_train_begin``) keeps the entry in ``optimizer.param_groups[0]["largebatch"]``
  (and in its own later checkpoints), and ``attach`` claims it from there.

Attached first (a plain loop, Lightning's ``configure_optimizers``), ``optimizer.load_state_dict``
restores the state itself: a load pre-hook takes the entry out of both places, a load post-hook
restores it once the optimizer itself has loaded. Either way the resumed run draws exactly the
noise the uninterrupted run would have drawn. A checkpoint that has the entry only at the top
level (saved by an older version) and is loaded before ``attach`` leaves nothing to claim: when
the optimizer already has per-parameter state and the transforms are fresh, ``attach`` says so in
one warning, and loading the checkpoint again after ``attach`` resumes exactly.

**torch.distributed.checkpoint** (FSDP2). ``get_optimizer_state_dict`` and
``set_optimizer_state_dict`` keep parameter-group keys, so the entry travels through them and
``dcp.save`` / ``dcp.load``; attach before building the state dict that ``dcp.load`` fills. They
create a missing optimizer state with one ``step()`` at learning rate 0 on zero gradients: that is
not an update, and an attached transform neither runs on it nor counts it (recognised as: no
optimizer state, every ``lr`` exactly 0, every gradient present and exactly 0). With
``StateDictOptions(flatten_optimizer_state_dict=True)`` a load keeps only the group keys the live
optimizer has, so the entry is lost; save the handle, a ``Stateful``, next to it. ``dcp.load``
fills only the keys of the state dict it is given, so an optimizer loaded through DCP *before*
``attach`` has no entry to claim: ``attach`` warns when that optimizer has per-parameter state
(and doing what the warning says resumes exactly); one without any (plain SGD without momentum)
cannot be told from a fresh one, so attach first::

    state = {"model": get_model_state_dict(model),
             "optimizer": get_optimizer_state_dict(model, optimizer), "noise": handle}
    dcp.save(state, checkpoint_id=path)   # resume: attach, rebuild `state`, dcp.load, set_*

Transforms that need the micro-batches themselves (an overridden ``after_microbatch`` or
``loss_weights``: the shaped noise kinds) cannot be driven from ``step`` alone; ``attach`` refuses
them with a message. Their state is not in the optimizer's: save ``transform.state_dict()`` next
to it and call ``transform.load_state_dict`` on resume.

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

Resuming with the optimizer loaded before ``attach`` (the HF ``Trainer``'s order)::

    >>> from largebatch.gradient.noise import GradientNoise
    >>> def fresh(seed):
    ...     model = torch.nn.Linear(2, 1)
    ...     opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ...     return model, opt, GradientNoise(model.parameters(), alpha=1e-3, seed=seed)
    >>> model, opt, noise = fresh(seed=0)
    >>> _ = noise.attach(opt)
    >>> for _ in range(3):
    ...     opt.zero_grad(); model(torch.ones(1, 2)).sum().backward(); opt.step()
    >>> ckpt = opt.state_dict()
    >>> model2, opt2, noise2 = fresh(seed=99)
    >>> opt2.load_state_dict(ckpt)                 # no hook yet: the group keeps the entry
    >>> _ = noise2.attach(opt2)                    # claims it
    >>> noise2.t, torch.equal(noise2.generator.get_state(), noise.generator.get_state())
    (3, True)
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle

from largebatch.gradient.info import Attachable, Chain, UpdateInfo

STATE_KEY = "largebatch"

# The attachment keys in use per optimizer: two attachments must not write the same entry.
_ATTACHED: weakref.WeakKeyDictionary[torch.optim.Optimizer, set[str]] = weakref.WeakKeyDictionary()
# Every key ever attached per optimizer: re-attaching after ``remove()`` is not a resume.
_EVER_ATTACHED: weakref.WeakKeyDictionary[torch.optim.Optimizer, set[str]] = (
    weakref.WeakKeyDictionary()
)


def _is_state_init_step(optimizer: torch.optim.Optimizer) -> bool:
    """The step ``torch.distributed.checkpoint``'s state-dict helpers run to create a missing
    optimizer state: no state yet, every learning rate 0, every gradient present and 0.
    Checked only on the (cheap) first two conditions before it reads any gradient."""
    if optimizer.state:
        return False
    groups = optimizer.param_groups
    if any("lr" not in g or float(g["lr"]) != 0.0 for g in groups):
        return False
    grads = [p.grad for g in groups for p in g["params"] if p.requires_grad]
    if not grads or any(g is None or g.is_sparse for g in grads):
        return False
    return not any(bool(g.any()) for g in grads)


class AttachHandle:
    """What :func:`attach` returns: ``remove()`` takes every hook off the optimizer.

    ``state_dict()`` / ``load_state_dict()`` hold what the optimizer's checkpoint carries for it
    (so the handle is a ``torch.distributed.checkpoint`` ``Stateful``).

    Attributes:
        chain: the transforms the optimizer runs, as a
            :class:`~largebatch.gradient.base.TransformChain`.
        key: the entry of ``optimizer.state_dict()["largebatch"]`` holding their state.
        step: optimizer updates completed through this attachment (``UpdateInfo.step``).
    """

    def __init__(
        self,
        chain: Chain,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler | None,
        key: str,
    ) -> None:
        self.chain = chain
        self.key = key
        self.step = 0
        self.scaler = scaler
        self._optimizer = weakref.ref(optimizer)
        self._skip = False  # set by the pre-hook: fused AMP found inf, or a DCP state-init step
        self._loaded: dict[str, Any] | None = None
        self._restored = False  # load_state_dict ran since the last update (e.g. by dcp.load)
        self._handles: list[RemovableHandle] = [
            optimizer.register_step_pre_hook(self._pre_step),
            optimizer.register_step_post_hook(self._post_step),
            optimizer.register_state_dict_post_hook(self._state_dict_post),
            optimizer.register_load_state_dict_pre_hook(self._load_pre),
            optimizer.register_load_state_dict_post_hook(self._load_post),
        ]

    # -- step ------------------------------------------------------------------------------------

    def _info(self, optimizer: torch.optim.Optimizer) -> UpdateInfo:
        groups = optimizer.param_groups
        lr = float(groups[0]["lr"])
        lrs = [float(g.get("lr", lr)) for g in groups]
        param_lrs = None
        if any(x != lr for x in lrs):
            param_lrs = {id(p): x for g, x in zip(groups, lrs, strict=True) for p in g["params"]}
        return UpdateInfo(step=self.step, lr=lr, param_lrs=param_lrs)

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
            if _is_state_init_step(optimizer):
                self._skip = True  # not an update: the transforms neither run nor count it
                return None
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
        self._restored = False

    # -- state -----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """``{"step": updates seen, "transforms": the chain's state}``; with
        :meth:`load_state_dict` this makes the handle a ``torch.distributed.checkpoint``
        ``Stateful``."""
        return {"step": self.step, "transforms": self.chain.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.chain.load_state_dict(state["transforms"])
        self._restored = True

    def _claim(self, optimizer: torch.optim.Optimizer) -> bool:
        """Load this attachment's entry from an optimizer that loaded a checkpoint before it was
        attached (``param_groups[0]["largebatch"]``) and take it out of the group."""
        group = optimizer.param_groups[0]
        stash = group.get(STATE_KEY)
        if not isinstance(stash, dict) or self.key not in stash:
            return False
        self.load_state_dict(stash[self.key])
        rest = {k: v for k, v in stash.items() if k != self.key}
        if rest:
            group[STATE_KEY] = rest
        else:
            del group[STATE_KEY]
        return True

    def _state_dict_post(
        self, optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]
    ) -> dict[str, Any]:
        groups = state_dict.get("param_groups") or [{}]
        # entries another attachment wrote, and any still unclaimed in the live group
        entries = {
            **groups[0].get(STATE_KEY, {}),
            **state_dict.get(STATE_KEY, {}),
            self.key: self.state_dict(),
        }
        state_dict[STATE_KEY] = entries
        groups[0][STATE_KEY] = entries  # the packed group is a fresh dict: safe to write
        return state_dict

    def _load_pre(
        self, optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]
    ) -> dict[str, Any]:
        top = state_dict.get(STATE_KEY) or {}
        groups = list(state_dict.get("param_groups") or [])
        stash = (groups[0].get(STATE_KEY) if groups else None) or {}
        entry = top.get(self.key, stash.get(self.key))
        if entry is None:
            self._loaded = None
            if not self._restored:
                warnings.warn(
                    f"optimizer.load_state_dict: no state for the attached transforms "
                    f"'{self.key}' (a checkpoint saved before attach, or a flattened DCP state "
                    "dict?); they keep their current state; save the checkpoint after attach, or "
                    "save the handle's state_dict() next to it",
                    stacklevel=3,
                )
            return state_dict
        self._loaded = entry
        out = dict(state_dict)
        rest = {k: v for k, v in top.items() if k != self.key}
        if rest:
            out[STATE_KEY] = rest
        else:
            out.pop(STATE_KEY, None)
        if self.key in stash:
            first = dict(groups[0])
            rest = {k: v for k, v in stash.items() if k != self.key}
            if rest:
                first[STATE_KEY] = rest
            else:
                del first[STATE_KEY]
            out["param_groups"] = [first, *groups[1:]]
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


def _check_params(chain: Chain, optimizer: torch.optim.Optimizer) -> None:
    """Every parameter a transform acts on must be one the optimizer updates (by identity):
    otherwise its noise lands on gradients no step reads (built on another model: nothing at
    all happens) or, at stage ``update``, moves weights the optimizer leaves alone."""
    stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for t in chain.transforms:
        missing = [i for i, p in enumerate(t.params) if id(p) not in stepped]
        if not missing:
            continue
        which = "its" if len(missing) == len(t.params) else f"{len(missing)} of its {len(t.params)}"
        raise ValueError(
            f"transform '{t.name}': {which} parameters are not among the optimizer's parameters "
            "(built on another model, or on parameters the optimizer does not update?): what it "
            "adds there never reaches a weight the optimizer steps; build it on the parameters "
            "the optimizer was given, e.g. GradientNoise(model.parameters()) with "
            "torch.optim.SGD(model.parameters()) on the same model"
        )


def _hookable(optimizer: Any) -> torch.optim.Optimizer:
    """``optimizer``, or the optimizer a wrapper steps when the wrapper has no step hooks of its
    own (it never ran ``torch.optim.Optimizer.__init__``)."""
    seen = optimizer
    while not hasattr(optimizer, "_optimizer_step_pre_hooks"):
        inner = getattr(optimizer, "optimizer", None)
        if inner is None or inner is optimizer:
            raise TypeError(
                f"attach needs a torch.optim.Optimizer, got {type(seen).__name__}; pass the "
                "optimizer that makes the update"
            )
        optimizer = inner
    return optimizer


def attach(
    transform: Attachable,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None = None,
) -> AttachHandle:
    """Run ``transform`` once per ``optimizer.step`` (see the module docstring for every case).

    Args:
        transform: a :class:`~largebatch.gradient.base.GradientTransform` or a
            :class:`~largebatch.gradient.base.TransformChain` (run in list order).
        optimizer: any ``torch.optim.Optimizer``. A wrapper that steps an inner optimizer
            without torch's step hooks of its own (accelerate's ``AcceleratedOptimizer``, which
            the HF ``Trainer`` hands to callbacks; Lightning's ``LightningOptimizer``) is
            unwrapped: the transforms attach to ``optimizer.optimizer``.
        scaler: the ``torch.amp.GradScaler`` the loop steps through, if any. Not needed for
            correctness (a skipped step never calls ``optimizer.step``); given, it makes a plain
            ``optimizer.step()`` on still-scaled gradients an error instead of a silent mistake.

    Returns:
        an :class:`AttachHandle`; ``handle.remove()`` detaches.

    If the optimizer loaded a checkpoint before this call, the transforms' state it kept
    (``optimizer.param_groups[0]["largebatch"]``) is loaded here, so the run resumes exactly;
    see the module docstring for when ``attach`` warns instead.
    """
    optimizer = _hookable(optimizer)
    chain = transform.as_chain()
    refused = chain.acts_per_microbatch()
    if refused:
        raise ValueError(
            f"transforms {refused} act per micro-batch (after_microbatch / loss_weights) and "
            "cannot be attached to optimizer.step; call the chain's hooks from your loop "
            "(see largebatch.gradient.base) and save its state_dict() with your checkpoint, "
            "or train with the engine"
        )
    _check_params(chain, optimizer)
    key = "+".join(chain.order)
    keys = _ATTACHED.setdefault(optimizer, set())
    if key in keys:
        raise ValueError(f"transforms '{key}' are already attached to this optimizer")
    keys.add(key)
    handle = AttachHandle(chain, optimizer, scaler, key)
    ever = _EVER_ATTACHED.setdefault(optimizer, set())
    resumed = handle._claim(optimizer)
    fresh = all(getattr(t, "t", 0) == 0 for t in chain.transforms)
    if not resumed and optimizer.state and fresh and key not in ever:
        warnings.warn(
            f"attach: the optimizer already has state (it has stepped, or loaded a checkpoint) "
            f"but none for the transforms '{key}', which start from t=0; if this is a resume, "
            "load the checkpoint again after attach (optimizer.load_state_dict; with "
            "torch.distributed.checkpoint: get_optimizer_state_dict, dcp.load, "
            "set_optimizer_state_dict) to restore them",
            stacklevel=3,
        )
    ever.add(key)
    return handle
