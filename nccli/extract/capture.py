"""Capturing the planned layers batch after batch: forward hooks that pool each output when it exists.

Outputs are pooled inside the hook, at the moment they exist: later in-place
operations cannot change what was captured, and views are copied. A model
that fails after the probe, or whose layer gives another per-sample shape than
in the probe, is the user's model failing: a one-line :class:`ModelError`; an
error of the hooks themselves is a bug and keeps its traceback.
"""

from collections import Counter

import torch
from torch import nn

from nccli.errors import ModelError
from nccli.extract.hooks import LayerPlan, first_tensor, model_failure


def pool_rows(output: torch.Tensor, pooling: str) -> torch.Tensor:
    """(N, ...) → (N, d) float32, a new tensor that no later in-place operation can touch."""
    tokens = output.ndim == 3
    dims = (1,) if tokens else tuple(range(2, output.ndim))
    if pooling in ("avg", "mean"):
        return output.mean(dim=dims, dtype=torch.float32)
    if pooling == "max":
        return output.amax(dim=dims).to(torch.float32)
    if pooling == "cls":
        return output[:, 0].to(torch.float32, copy=True)
    return output.reshape(len(output), -1).to(torch.float32, copy=True)


class FeatureCapture:
    """Hooks that fill ``features`` with the pooled rows of every planned layer during one forward pass."""

    def __init__(self, model: nn.Module, plans: list[LayerPlan]):
        self.model, self.plans = model, plans
        self.features: dict[str, torch.Tensor] = {}
        self._calls: Counter = Counter()
        self._handles = []
        self._hook_error: BaseException | None = None  # raised in a hook: passes through the model untranslated

    def __enter__(self) -> "FeatureCapture":
        modules = dict(self.model.named_modules())
        for module_name in {plan.module_name for plan in self.plans}:
            for pre_hook in (False, True):
                wanted = {p.call: p for p in self.plans if p.module_name == module_name and p.pre_hook == pre_hook}
                if wanted:
                    self._handles.append(self._register(modules[module_name], module_name, pre_hook, wanted))
        return self

    def _register(self, module: nn.Module, module_name: str, pre_hook: bool, wanted: dict[int, LayerPlan]):
        key = (module_name, pre_hook)

        def capture(_module, args, output=None):
            call = self._calls[key]
            self._calls[key] += 1
            plan = wanted.get(call)
            if plan is not None:
                try:
                    self.features[plan.name] = self._rows(plan, first_tensor(args if pre_hook else output))
                except BaseException as error:
                    self._hook_error = error
                    raise

        return module.register_forward_pre_hook(capture) if pre_hook else module.register_forward_hook(capture)

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _rows(self, plan: LayerPlan, tensor: torch.Tensor | None) -> torch.Tensor:
        """The pooled rows of one layer's output, which must have the per-sample shape the probe saw."""
        if tensor is None or tuple(tensor.shape[1:]) != plan.sample_shape:
            found = "no tensor" if tensor is None else "×".join(map(str, tensor.shape[1:])) + " per sample"
            raise ModelError(
                f"layer '{plan.model_name or plan.name}' gave {found} for a batch, not the "
                f"{'×'.join(map(str, plan.sample_shape))} of the probe batch (a forward pass that depends on the data?)"
            )
        return pool_rows(tensor, plan.pooling)

    def run(self, batch: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Forward ``batch``; return the pooled rows of each planned layer and the model's output."""
        self.features, self._calls, self._hook_error = {}, Counter(), None
        try:
            output = first_tensor(self.model(batch))
        except Exception as error:
            if error is self._hook_error:  # a wrong layer shape (one line) or a bug of the hooks (traceback)
                raise
            raise ModelError(model_failure(error, batch)) from None  # the user's model failing on this batch
        missing = [plan.name for plan in self.plans if plan.name not in self.features]
        if missing:
            raise ModelError(f"layer(s) {', '.join(missing)} did not run for this batch (data-dependent forward pass?)")
        return self.features, output
