"""Probing a model once with forward hooks, choosing its layers and planning how each is pooled.

A probe forward pass records every module call in the order its output is
ready (0 = closest to the input). A module that runs k > 1 times per forward
pass (torchvision's ResNet reuses one in-place ReLU per block) is offered as
its calls ``name#1`` … ``name#k``; naming it bare is refused, never mixed.
The classifier is the last linear layer run on (N, d) inputs; its input is
captured by a forward *pre*-hook as the layer ``<classifier>:input``, so
``/classifier/weight`` and that layer always agree in width. Each batch is
captured by :mod:`~nccli.extract.capture`.

A module name may hold ``/`` (an ``nn.ModuleDict`` key), which a layer name in
the feature file cannot (HDF5 would make it nested groups, ``docs/feature-file.md``):
such a layer is stored with each ``/`` written ``%2F`` (``blocks/a`` →
``blocks%2Fa``), the name to use with ``nccli analyze --layers``, and extract
says so; ``--layers`` takes the model's own name.
"""

import glob
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
from torch import nn

from nccli.errors import ModelError, UsageError, first_line
from nccli.extract.config import MapPooling, TokenPooling
from nccli.extract.loaded import ModelLayout
from nccli.extract.messages import did_you_mean
from nccli.globs import names_matching

CALL_MARK = "#"
INPUT_MARK = ":input"
SLASH_STORED_AS = "%2F"
CLASS_TOKEN_NAMES = ("class_token", "cls_token")  # torchvision's ViT; timm's and Hugging Face's


@dataclass(frozen=True)
class LayerCall:
    """One capturable output seen in the probe: a module call, or the classifier's input."""

    name: str
    module_name: str
    call: int  # 0-based call of the module within one forward pass
    type_name: str
    sample_shape: tuple[int, ...] | None  # None when the output holds no per-sample tensor
    default: bool = False
    pre_hook: bool = False


@dataclass(frozen=True)
class Probe:
    """What one forward pass showed: capturable layers in forward order, the classifier and the logits."""

    layers: tuple[LayerCall, ...]
    calls: dict[str, int]  # module name → calls per forward pass
    classifier: str | None
    logits_width: int | None
    has_class_token: bool
    classifier_note: str | None = None  # why no classifier was found where the model has logits


@dataclass(frozen=True)
class LayerPlan:
    """A layer to store: where to hook it, how to pool it, and its row width."""

    name: str
    module_name: str
    call: int
    order: int
    sample_shape: tuple[int, ...]
    pooling: str
    width: int
    pre_hook: bool = False
    model_name: str = ""  # the layer's name in the model, when ``name`` (as stored) differs from it


def first_tensor(value) -> torch.Tensor | None:
    """The tensor itself, or the first tensor of a tuple/list output or of a mapping's values (Hugging Face's
    ``ModelOutput``: ``logits`` first, ``loss`` absent without labels)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, Mapping):
        value = tuple(value.values())
    if isinstance(value, (tuple, list)):
        return next((item for item in value if isinstance(item, torch.Tensor)), None)
    return None


def probe_model(model: nn.Module, batch: torch.Tensor, layout: ModelLayout | None = None) -> Probe:
    """Run ``batch`` once with a hook on every module and record what ran, in output order.

    ``layout`` (a model zoo's word) names the classifier and the default layers; without it the classifier is
    the last linear layer run on (N, d) inputs. Either way it must produce the model's output itself, or W and
    b would not give the logits, and no classifier is reported.
    """
    records: list[tuple[float, LayerCall]] = []
    outputs: list[torch.Tensor | None] = []  # kept alive during the probe, so no two outputs share freed memory
    calls: Counter = Counter()
    classifier: tuple[str, float, int, str, torch.Tensor] | None = None  # name, position, width, type, input
    classifier_output: torch.Tensor | None = None
    modules = dict(model.named_modules())

    def record(name: str):
        def hook(module, args, output):
            nonlocal classifier
            tensor, inputs = first_tensor(output), first_tensor(args)
            per_sample = tensor is not None and tensor.ndim >= 1 and tensor.shape[0] == len(batch)
            shape = tuple(tensor.shape[1:]) if per_sample else None
            position = float(len(records))
            records.append((position, LayerCall(name, name, calls[name], type(module).__name__, shape)))
            outputs.append(tensor)
            if _is_linear_call(module, inputs, tensor) and (layout is None or name == layout.classifier):
                nonlocal classifier_output
                classifier = (name, position, tuple(inputs.shape[1:]), type(module).__name__, inputs)
                classifier_output = tensor.flatten(1)  # a 1×1 convolution's (N, out, 1, 1): the logits
            calls[name] += 1

        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in modules.items() if name]
    try:
        with torch.inference_mode():
            output = first_tensor(model(batch))
    except Exception as error:  # the user's model may raise anything on a wrong input
        raise ModelError(model_failure(error, batch)) from None
    finally:
        for handle in handles:
            handle.remove()
    classifier, note = _producing_output(classifier, classifier_output, output, layout)
    feeds_classifier: set[tuple[str, int]] = set()
    if classifier is not None:
        name, position, input_shape, type_name, inputs = classifier
        feeds_classifier = {
            (layer.module_name, layer.call)
            for (_, layer), tensor in zip(records, outputs)
            if tensor is not None and _same_values(tensor, inputs)
        }
        call = LayerCall(name + INPUT_MARK, name, calls[name] - 1, f"{type_name} input", input_shape, pre_hook=True)
        records.append((position - 0.5, call))  # the input exists just before the classifier's output
    outputs.clear()
    layers = [_named_call(layer, calls) for _, layer in sorted(records, key=lambda item: item[0])]
    defaults = _default_picks(layers, classifier[0] if classifier else None, calls, feeds_classifier, layout)
    logits_width = output.shape[1] if output is not None and output.ndim == 2 else None
    return Probe(
        layers=tuple(replace(layer, default=layer.name in defaults) for layer in layers),
        calls=dict(calls),
        classifier=classifier[0] if classifier else None,
        logits_width=logits_width,
        has_class_token=any(name.split(".")[-1] in CLASS_TOKEN_NAMES for name, _ in model.named_parameters()),
        classifier_note=note if logits_width is not None else None,
    )


def _producing_output(classifier, classifier_output, output, layout: ModelLayout | None):
    """The classifier if its output is the model's output, else None and the reason."""
    if classifier is None:
        if layout is not None:
            return None, "the model's head is not one linear layer (nn.Linear on (N, d) inputs)"
        return None, "no linear layer (nn.Linear on (N, d) inputs) gives the model's output"
    if output is None or classifier_output is None or not _same_output(output, classifier_output):
        return None, f"the output of '{classifier[0]}' is not the model's output, so its W and b do not give the logits"
    return classifier, None


def model_failure(error: Exception, batch: torch.Tensor) -> str:
    """One line for the user's model raising ``error`` on ``batch``; out of memory points at --batch-size."""
    hint = "; pass a smaller --batch-size" if isinstance(error, torch.cuda.OutOfMemoryError) else ""
    shape = list(batch.shape)
    return f"the model failed on a batch of shape {shape}: {type(error).__name__}: {first_line(error)}{hint}"


def _is_linear_call(module: nn.Module, inputs: torch.Tensor | None, output: torch.Tensor | None) -> bool:
    """nn.Linear, any module whose own 2-D ``weight`` maps (N, in) inputs to (N, out) (torch.export's copies), or a
    1×1 nn.Conv2d of pooled (N, in, 1, 1) maps, a linear map of them (timm's dla and dpn heads)."""
    if inputs is None or output is None:
        return False
    if isinstance(module, nn.Conv2d) and inputs.ndim == output.ndim == 4:
        pooled = tuple(inputs.shape[2:]) == tuple(output.shape[2:]) == (1, 1)
        return pooled and tuple(module.kernel_size) == (1, 1) and module.groups == 1
    if inputs.ndim != 2 or output.ndim != 2:
        return False
    if isinstance(module, nn.Linear):
        return True
    weight = dict(module.named_parameters(recurse=False)).get("weight")
    return weight is not None and weight.ndim == 2 and tuple(weight.shape) == (output.shape[1], inputs.shape[1])


def _same_values(output: torch.Tensor, classifier_input: torch.Tensor) -> bool:
    """The output *is* the classifier's input: the same memory seen whole (e.g. avgpool → flatten → fc)."""
    return (
        output.data_ptr() == classifier_input.data_ptr()
        and output.numel() == classifier_input.numel()
        and output.dtype == classifier_input.dtype
        and output.is_contiguous()
        and classifier_input.is_contiguous()
    )


def _named_call(layer: LayerCall, calls: Counter) -> LayerCall:
    if layer.pre_hook or calls[layer.module_name] == 1:
        return layer
    return replace(layer, name=f"{layer.module_name}{CALL_MARK}{layer.call + 1}")


def _same_output(output: torch.Tensor, classifier_output: torch.Tensor) -> bool:
    """The same values (NaN where the other has NaN: a diverged model is refused later, by name)."""
    return output is classifier_output or (
        output.shape == classifier_output.shape
        and torch.allclose(output.float(), classifier_output.float(), rtol=0, atol=0, equal_nan=True)
    )


def _default_picks(
    layers: list[LayerCall],
    classifier: str | None,
    calls: Counter,
    feeds_classifier: set[tuple[str, int]],
    layout: ModelLayout | None = None,
) -> set[str]:
    """The top-level blocks (below single-child wrappers; or the zoo's stages) that do not hold the classifier,
    its input and its output.

    A block whose output is the classifier's input itself is left to ``<classifier>:input`` (no duplicate rows);
    the classifier's own output is the logits.
    """
    ran = {layer.module_name for layer in layers if not layer.pre_hook}
    children = sorted(set(layout.stages) & ran) if layout is not None else _top_level_blocks(ran)
    holds_classifier = {child for child in children if classifier and (classifier + ".").startswith(child + ".")}
    picks = {
        layer.name
        for layer in layers
        if layer.module_name in children
        and layer.module_name not in holds_classifier
        and layer.sample_shape is not None
        and (layer.module_name, layer.call) not in feeds_classifier
    }
    if classifier:
        logits = next(
            layer
            for layer in layers
            if layer.module_name == classifier and layer.call == calls[classifier] - 1 and not layer.pre_hook
        )
        picks |= {classifier + INPUT_MARK, logits.name}
    return picks


def _top_level_blocks(ran: set[str]) -> list[str]:
    prefix = ""
    while True:
        children = sorted({_child_of(prefix, name) for name in ran if name.startswith(prefix)} - {None})
        if len(children) == 1 and any(name.startswith(children[0] + ".") for name in ran):
            prefix = children[0] + "."
            continue
        return children


def _child_of(prefix: str, name: str) -> str | None:
    rest = name[len(prefix) :]
    return prefix + rest.split(".", 1)[0] if rest else None


def select_layers(probe: Probe, patterns: tuple[str, ...] | None) -> list[LayerCall]:
    """The layers named by ``--layers`` (names or globs), in forward order; the default picks without it."""
    if not patterns:
        return [layer for layer in probe.layers if layer.default]
    capturable = [layer for layer in probe.layers if layer.sample_shape is not None]
    chosen: set[str] = set()
    names = [layer.name for layer in capturable]
    for pattern in patterns:
        if pattern in names or not glob.has_magic(pattern):
            chosen.add(_exact(probe, capturable, pattern))
            continue
        modules = set(names_matching(pattern, {layer.module_name for layer in capturable}))
        matches = set(names_matching(pattern, names)) | {
            layer.name for layer in capturable if layer.module_name in modules
        }
        if not matches:
            raise UsageError(f"--layers '{pattern}' matches no layer; `nccli layers MODEL` lists them")
        chosen |= matches
    return [layer for layer in capturable if layer.name in chosen]


def _exact(probe: Probe, capturable: list[LayerCall], name: str) -> str:
    if any(layer.name == name for layer in capturable):
        return name
    if probe.calls.get(name, 0) > 1:
        calls = [layer.name for layer in capturable if layer.module_name == name and not layer.pre_hook]
        raise UsageError(
            f"layer '{name}' runs {probe.calls[name]} times per forward pass; name one call "
            f"({', '.join(calls)}) or all of them with '{name}{CALL_MARK}*'"
        )
    if any(layer.name == name for layer in probe.layers):
        raise UsageError(f"layer '{name}' returns no per-sample tensor, so it cannot be stored")
    names = [layer.name for layer in capturable]
    raise UsageError(
        f"no layer '{name}' runs in the model's forward pass{did_you_mean(name, names)} "
        "(`nccli layers MODEL` lists them)"
    )


def plan_layers(
    probe: Probe, layers: list[LayerCall], pool: MapPooling, token_pool: TokenPooling, max_dim: int
) -> list[LayerPlan]:
    """Pooling and width of each chosen layer; flattening above ``max_dim`` values is refused."""
    if token_pool == TokenPooling.AUTO:
        token_pool = TokenPooling.CLS if probe.has_class_token else TokenPooling.MEAN
    plans, stored = [], {}
    for order, layer in enumerate(layers):
        shape = layer.sample_shape
        pooling = "none" if len(shape) <= 1 else str(token_pool) if len(shape) == 2 else str(pool)
        width = _pooled_width(shape, pooling)
        if pooling == "flatten" and width > max_dim:
            size = "×".join(map(str, shape))
            raise UsageError(
                f"layer '{layer.name}' flattens to {width} values per sample ({size}), above --max-dim {max_dim}; "
                "use another pooling, fewer --layers, or raise --max-dim"
            )
        name = layer.name.replace("/", SLASH_STORED_AS)
        if name in stored:
            raise UsageError(
                f"layers '{stored[name]}' and '{layer.name}' would both be stored as '{name}' ('/' is stored as "
                f"'{SLASH_STORED_AS}'); leave one out of --layers"
            )
        stored[name] = layer.name
        renamed = layer.name if name != layer.name else ""
        plans.append(
            LayerPlan(name, layer.module_name, layer.call, order, shape, pooling, width, layer.pre_hook, renamed)
        )
    return plans


def _pooled_width(shape: tuple[int, ...], pooling: str) -> int:
    if pooling in ("none", "flatten"):
        return max(1, math.prod(shape))
    return shape[-1] if len(shape) == 2 else shape[0]
