"""Fake-quantized models that compute what ``dlac compile`` builds from them.

:func:`prepare` traces a PyTorch model with ``torch.fx``, folds each BatchNorm into the conv
before it (so the weights trained are the weights dlac quantizes), and replaces every
``nn.Conv2d`` / ``nn.Linear`` with a :class:`~compiler.train.qat_modules.QLayer`:

* the layer's precision comes from the same :class:`compiler.config.QuantConfig` rules as in
  ``dlac compile`` (overrides, then first layer / output heads in fp32 unless quantized,
  then the default), by the layer's module path (``conv_layers.0``);
* a residual add that is a conv's only consumer (``conv(x) + r``; of two convs the first
  operand's) and a ReLU (or ReLU6 / ``hardtanh`` with a lower bound >= 0) that is the layer's
  (or that add's) only consumer are fused into it, as dlac fuses them into the epilogue;
* a fused ReLU takes its threshold from ``QuantConfig.relu_thresholds`` (``fnmatch``
  patterns on the layer name, the first match wins, resolved as ``dlac compile`` resolves
  them; see :mod:`compiler.train.qat_modules`);
* with int8 activations the layer's output is quantized after the activation (``act_bits`` <
  8: unsigned ``act_bits`` after a fused ReLU/clip, else signed 8-bit, the rule of
  :mod:`target_dlac.codegen.modes.integer`); the graph input and the results of adds, average
  pools and concats get an :class:`~compiler.train.qat_modules.ActQuant`; max-pool, ReLU and
  reshapes keep their input's exponent (and so need none).  Other ops are refused in int8
  mode, naming the op.

The result, a :class:`QatModel`, trains with straight-through gradients, calibrates its
activation exponents like ``dlac compile --calib`` (:meth:`QatModel.calibrate`), reports its
layers' zero fractions, and exports a plain float module (:meth:`QatModel.export`) for
``torch.export`` whose compilation with :meth:`QatModel.compile_args` gives the same integers.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from compiler.config import QuantConfig
from compiler.train.qat_integer import integer_forward
from compiler.train.qat_modules import ActQuant, QLayer, _Point, resolve_relu_thresholds
from compiler.train.quant import QUANTIZED, WeightQuantizer, ternary_mask
from target_dlac.codegen.modes.intmath import unsigned_output
from target_dlac.core.errors import ConfigError

ACTIVATIONS = ("fp32", "int8")
ACT_BITS = (8, 4, 2)
SPARSITY = ("dynamic", "static")


@dataclass(frozen=True)
class QatSpec:
    """What the fake-quantized model computes: weights per layer (``quant``), activations
    (``fp32`` or ``int8``, with ``act_bits`` 8 / 4 / 2 on ReLU layer outputs), and whether the
    ternary zeros are re-derived every step (``dynamic``) or fixed at :func:`prepare`
    (``static``)."""

    quant: QuantConfig = field(default_factory=QuantConfig)
    activations: str = "fp32"
    act_bits: int = 8
    sparsity: str = "dynamic"

    def __post_init__(self):
        if self.activations not in ACTIVATIONS:
            raise ConfigError(f"activations={self.activations!r}; expected one of {ACTIVATIONS}")
        if self.act_bits not in ACT_BITS:
            raise ConfigError(f"act_bits={self.act_bits!r}; expected one of {ACT_BITS}")
        if self.act_bits != 8 and self.activations != "int8":
            raise ConfigError(f"act_bits={self.act_bits} needs int8 activations (--activations int8)")
        if self.sparsity not in SPARSITY:
            raise ConfigError(f"sparsity={self.sparsity!r}; expected one of {SPARSITY}")


# ----------------------------------------------------------------------------- graph helpers

_RELU_FNS = {F.relu, torch.relu, torch.relu_}
_MAXPOOL_FNS = {F.max_pool2d, torch.max_pool2d}
_AVGPOOL_FNS = {F.avg_pool2d, F.adaptive_avg_pool2d, torch.nn.functional.adaptive_avg_pool2d}
_ADD_FNS = {operator.add, operator.iadd, torch.add}
_CAT_FNS = {torch.cat, torch.concat}
_VIEW_FNS = {torch.flatten, torch.reshape, torch.transpose, torch.permute, torch.chunk, torch.split,
             torch.squeeze, torch.unsqueeze, getattr, operator.getitem}
_VIEW_METHODS = {"view", "reshape", "flatten", "size", "contiguous", "relu", "relu_", "transpose",
                 "permute", "chunk", "split", "squeeze", "unsqueeze"}
_PASS_MODULES = (nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Dropout, nn.Identity, nn.Unflatten)
_QUANT_MODULES = (nn.AvgPool2d, nn.AdaptiveAvgPool2d)


def _module(gm: fx.GraphModule, node: fx.Node):
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _fused_act(gm, node: fx.Node) -> tuple[str, float, float, fx.Node | None]:
    """The activation dlac fuses into ``node``'s layer: its only consumer, if a ReLU / clip."""
    if len(node.users) != 1:
        return "none", 0.0, 0.0, None
    user = next(iter(node.users))
    m = _module(gm, user)
    if isinstance(m, nn.ReLU) or (user.op == "call_function" and user.target in _RELU_FNS) \
            or (user.op == "call_method" and user.target in ("relu", "relu_")):
        return "relu", 0.0, 0.0, user
    if isinstance(m, nn.Hardtanh) and m.min_val >= 0:          # ReLU6 is a Hardtanh(0, 6)
        return "clip", float(m.min_val), float(m.max_val), user
    return "none", 0.0, 0.0, None


def _residual_add(gm, node: fx.Node, layer_nodes: set) -> fx.Node | None:
    """The add dlac fuses into conv ``node``'s epilogue as a residual (``conv2d_residual``):
    ``node``'s only consumer, an add of two computed tensors.  dlac's pattern tries the first
    operand as the layer when it is a conv output (then that conv takes the add, or, when
    its output has other users, no conv does) and the second operand only otherwise."""
    if not isinstance(_module(gm, node), nn.Conv2d) or len(node.users) != 1:
        return None
    add = next(iter(node.users))
    if add.op != "call_function" or add.target not in _ADD_FNS or len(add.args) != 2 or add.kwargs:
        return None
    a, b = add.args
    if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)) or a is b:
        return None
    other = b if a is node else a
    if other.op == "get_attr":
        return None
    if b is node and a in layer_nodes and isinstance(_module(gm, a), nn.Conv2d):
        return None                     # the first operand's conv takes it, or none does
    return add


def _fold_bn(gm: fx.GraphModule) -> None:
    """Fold every eval-mode BatchNorm whose input is a conv used only by it into that conv."""
    for node in list(gm.graph.nodes):
        bn = _module(gm, node)
        if not isinstance(bn, (nn.BatchNorm2d, nn.BatchNorm1d)) or len(node.args) != 1:
            continue
        src = node.args[0]
        conv = _module(gm, src) if isinstance(src, fx.Node) else None
        if not isinstance(conv, (nn.Conv2d, nn.Linear)) or len(src.users) != 1:
            continue
        g = bn.weight.detach() if bn.affine else torch.ones_like(bn.running_mean)
        b = bn.bias.detach() if bn.affine else torch.zeros_like(bn.running_mean)
        k = g / torch.sqrt(bn.running_var + bn.eps)
        w = conv.weight.detach() * k.reshape(-1, *([1] * (conv.weight.dim() - 1)))
        bias0 = conv.bias.detach() if conv.bias is not None else torch.zeros_like(k)
        conv.weight = nn.Parameter(w.contiguous())
        conv.bias = nn.Parameter(((bias0 - bn.running_mean) * k + b).contiguous())
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.delete_all_unused_submodules()     # the folded BatchNorms (no stray parameters)
    gm.recompile()


def _layer_nodes(gm) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if isinstance(_module(gm, n), (nn.Conv2d, nn.Linear))]


def _heads(layers: list[fx.Node]) -> set[str]:
    """Layers whose output reaches a graph output with no other layer in between."""
    targets = {n.target for n in layers}
    heads = set()
    for n in layers:
        todo, seen = list(n.users), set()
        while todo:
            u = todo.pop()
            if u in seen:
                continue
            seen.add(u)
            if u.op == "output":
                heads.add(n.target)
                break
            if not (u.op == "call_module" and u.target in targets):
                todo.extend(u.users)
    return heads


def _needs_quant(gm, node: fx.Node) -> bool | None:
    """Whether dlac's integer pipeline gives ``node``'s result its own exponent (``True``),
    keeps its input's (``False``), or ``None``: an op this module does not know."""
    m = _module(gm, node)
    if node.op in ("placeholder", "get_attr", "output"):
        return False
    if m is not None:
        if isinstance(m, QLayer) or isinstance(m, _PASS_MODULES):
            return False
        return True if isinstance(m, _QUANT_MODULES) else None
    if node.op == "call_method":
        return False if node.target in _VIEW_METHODS else None
    t = node.target
    if t in _RELU_FNS or t in _MAXPOOL_FNS or t in _VIEW_FNS or t is F.dropout:
        return False
    if t in _ADD_FNS or t in _CAT_FNS or t in _AVGPOOL_FNS:
        return True
    return None


def _op_name(node: fx.Node) -> str:
    return f"{node.op} {getattr(node.target, '__name__', node.target)} (node '{node.name}')"


# ----------------------------------------------------------------------------- prepare

def _quantizer(spec: QatSpec, precision: str, inner: nn.Module) -> WeightQuantizer | None:
    q = spec.quant
    depthwise = isinstance(inner, nn.Conv2d) and inner.groups > 1 and inner.weight.shape[1] == 1
    if precision == "swis" and depthwise:       # no input-channel groups: int8, as the compiler does
        return WeightQuantizer("int8", q.cluster, q.threshold_factor)
    if precision in QUANTIZED:
        return WeightQuantizer(precision, q.cluster, q.threshold_factor, q.swis_shifts, q.swis_consecutive)
    if precision == "fp32" and spec.activations == "int8":
        return WeightQuantizer("fp32")          # held as int8, a scale per filter
    return None


def prepare(model: nn.Module, example: torch.Tensor, spec: QatSpec | None = None) -> "QatModel":
    """A fake-quantized copy of ``model`` under ``spec`` (``model`` is not modified)."""
    spec = spec or QatSpec()
    try:
        gm = fx.symbolic_trace(copy.deepcopy(model).eval())
    except Exception as e:     # noqa: BLE001 - fx's errors are of many types
        raise ConfigError(f"cannot trace the model with torch.fx for training: {e}") from None
    _fold_bn(gm)
    float_gm = copy.deepcopy(gm)
    layers = _layer_nodes(gm)
    if not layers:
        raise ConfigError("the model has no nn.Conv2d / nn.Linear layer to train")
    heads = _heads(layers)
    int8 = spec.activations == "int8"
    # decided on the traced graph, before any layer is replaced
    residual = {n: _residual_add(gm, n, set(layers)) for n in layers}
    epilogue = {n: _fused_act(gm, residual[n] or n) for n in layers}
    thresholds = resolve_relu_thresholds(spec.quant, {n.target: epilogue[n][0] for n in layers})
    for i, node in enumerate(layers):
        inner = _module(gm, node)
        if isinstance(inner, nn.Conv2d) and inner.padding_mode != "zeros":
            raise ConfigError(f"layer {node.target}: padding_mode={inner.padding_mode!r}; training "
                              "covers zero padding only")
        precision, _ = spec.quant.precision_for(node.target, i, len(layers), node.target in heads)
        res_add = residual[node]
        act, lo, hi, act_node = epilogue[node]
        low = unsigned_output(act, lo, res_add is not None, spec.act_bits)     # the codegen's rule
        mask = None
        if spec.sparsity == "static" and precision in QUANTIZED:
            if precision != "ternary":
                raise ConfigError(f"layer {node.target}: a static sparsity mask is for ternary "
                                  f"weights; this layer is {precision}")
            mask = ternary_mask(inner.weight.detach().numpy(), spec.quant.cluster, spec.quant.threshold_factor)
        q = QLayer(inner, node.target, precision, _quantizer(spec, precision, inner), act, lo, hi,
                   spec.act_bits if low else 8, not low, int8, mask, thresholds.get(node.target, 0.0))
        gm.add_submodule(node.target, q)
        if res_add is not None:         # the layer takes (input, residual) and replaces the add
            other = res_add.args[1] if res_add.args[0] is node else res_add.args[0]
            with gm.graph.inserting_before(res_add):
                fused = gm.graph.call_module(node.target, (node.args[0], other))
            res_add.replace_all_uses_with(fused)
            gm.graph.erase_node(res_add)
            gm.graph.erase_node(node)
            node = fused
        if act_node is not None:
            act_node.replace_all_uses_with(node)
            gm.graph.erase_node(act_node)
    if int8:
        _insert_act_quants(gm, example)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return QatModel(gm, float_gm, spec)


def _insert_act_quants(gm: fx.GraphModule, example: torch.Tensor) -> None:
    from torch.fx.passes.shape_prop import ShapeProp

    layers = [m for m in gm.modules() if isinstance(m, QLayer)]
    for m in layers:                            # float activations: the shapes, no exponents yet
        m.quantize = False
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(example)    # which nodes hold tensors (sizes do not)
    finally:
        for m in layers:
            m.quantize = True
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "output" and "tensor_meta" not in node.meta:
            continue                            # a size, a tuple of chunks, ...: nothing to quantize
        need = _needs_quant(gm, node) if node.op != "placeholder" else True
        if need is None:
            raise ConfigError(f"training with int8 activations does not cover {_op_name(node)}; "
                              "use --activations fp32")
        if not need:
            continue
        at = node
        act, _, _, act_node = _fused_act(gm, node)
        if act_node is not None and node.op != "placeholder":
            at = act_node               # an add + ReLU is quantized after the ReLU
        name = f"_dlac_act{count}"
        count += 1
        gm.add_submodule(name, ActQuant(True))
        with gm.graph.inserting_after(at):
            qn = gm.graph.call_module(name, (at,))
        at.replace_all_uses_with(qn, delete_user_cb=lambda u: u is not qn)


class QatModel(nn.Module):
    """A fake-quantized model (see the module docstring).  ``state_dict`` holds the latent
    weights, static masks, calibration maxima and exponents."""

    def __init__(self, gm: fx.GraphModule, float_gm: fx.GraphModule, spec: QatSpec):
        super().__init__()
        self.net = gm
        self.spec = spec
        self._float = [float_gm]         # not a submodule: no duplicate parameters
        #: evaluation with int8 activations runs :func:`integer_forward` (set False for the
        #: float fake-quantization, e.g. to measure what the rounding difference is)
        self.exact = True

    def qlayers(self) -> list[QLayer]:
        return [m for m in self.net.modules() if isinstance(m, QLayer)]

    def points(self) -> list[_Point]:
        return [m for m in self.net.modules() if isinstance(m, _Point)]

    def forward(self, x, observe=None):
        """The model's output; ``observe(layer, output)``: see :func:`integer_forward`
        (called by the exact integer forward only)."""
        if self.exact and not self.training and self.spec.activations == "int8":
            if not all(bool(p.calibrated) for p in self.points() if p.quantize):
                raise ConfigError("the fake-quantized model has int8 activations and was not "
                                  "calibrated: call QatModel.calibrate(batches) before evaluating it")
            return integer_forward(self.net, x, observe)      # what the binary computes, bit for bit
        return self.net(x)

    @property
    def act_l1(self) -> torch.Tensor:
        """The activation L1 term of the last training forward: the sum over the layers of
        the mean |output| (after the fused activation and a float ReLU threshold, before
        quantization)."""
        l1 = [m.l1_activation().abs().mean() for m in self.qlayers() if m.last is not None]
        return torch.stack(l1).sum() if l1 else torch.zeros(())

    def refresh(self) -> None:
        """Start of an epoch.  The quantizers re-derive everything at every step (SWIS included:
        it takes about 60 ms for the MNIST CNN), so there is nothing to refresh."""

    @torch.no_grad()
    def calibrate(self, batches) -> None:
        """Activation exponents from the largest magnitudes over ``batches``, measured with
        quantized weights and float activations, as ``dlac compile --calib`` measures them."""
        if self.spec.activations != "int8":
            return
        pts = self.points()
        was = self.training
        self.eval()
        for p in pts:
            p.start_calibration()
            p.mode = "calib"
        try:
            n = 0
            for x in batches:
                self.net(x)
                n += 1
            if n == 0:
                raise ConfigError("calibration needs at least one batch")
        finally:
            for p in pts:
                p.mode = "run"
        for p in pts:
            p.finish_calibration()
        self.train(was)

    def layers(self) -> list[dict]:
        return [{"name": m.name, "precision": m.precision, "shape": list(m.inner.weight.shape),
                 "zero_fraction": m.zero_fraction(), "act_bits": m.bits if m.quantize else None,
                 "sparsity": "static" if m.mask is not None else "dynamic",
                 "relu_threshold": m.threshold} for m in self.qlayers()]

    @torch.no_grad()
    def act_density(self, batches) -> dict[str, float]:
        """Per ReLU layer, the fraction of non-zero outputs over ``batches`` (eval mode, as
        :meth:`forward` computes them: the exact integer forward with int8 activations)."""
        relu = [m for m in self.qlayers() if m.act == "relu"]
        nonzero, total = {m.name: 0 for m in relu}, {m.name: 0 for m in relu}

        def count(m, y):
            if m.act == "relu":
                nonzero[m.name] += int(torch.count_nonzero(y))
                total[m.name] += y.numel()
        was = self.training
        self.eval()
        hooks = [m.register_forward_hook(lambda m, _, y: count(m, y)) for m in relu]   # float forward
        try:
            for x in batches:
                self(x, observe=count)                                             # exact forward
        finally:
            for h in hooks:
                h.remove()
            self.train(was)
        return {k: nonzero[k] / total[k] if total[k] else float("nan") for k in nonzero}

    def export(self) -> nn.Module:
        """A plain float module (the BN-folded model) with the weights dlac must compile."""
        out = copy.deepcopy(self._float[0])
        for q in self.qlayers():
            tgt = out.get_submodule(q.name)
            tgt.weight = nn.Parameter(q.export_weight())
            if q.inner.bias is not None:
                tgt.bias = nn.Parameter(q.inner.bias.detach().clone())
        return out.eval()

    def compile_args(self) -> list[str]:
        """``dlac compile`` options that build this model's quantization."""
        q = self.spec.quant
        quant = "none" if q.weights == "fp32" else q.weights
        args = ["--quant", quant, "--granularity", q.granularity, "--cluster-size", str(q.cluster_size)]
        if q.weights == "swis":
            args += ["--swis-shifts", str(q.swis_shifts)] + (["--swis-consecutive"] if q.swis_consecutive else [])
        if not q.keep_first:
            args.append("--quantize-first")
        if not q.keep_last:
            args.append("--quantize-last")
        for pattern, prec in q.overrides.items():
            args += ["--precision", f"{pattern}={prec}"]
        for m in self.qlayers():
            if m.threshold > 0:
                args += ["--relu-threshold", f"{m.name}={m.threshold!r}"]
        if self.spec.activations == "int8":
            args += ["--activations", "int8"]
            if self.spec.act_bits != 8:
                args += ["--act-bits", str(self.spec.act_bits)]
        return args
