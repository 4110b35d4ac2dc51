"""The backend quantizers, configured for this network.

- xnnpack: ExecuTorch's `XNNPACKQuantizer`, symmetric int8, per-channel weights, with the
  float-island filter of `dealthdr/quantize/policy.py`.
- coreml: ExecuTorch's `CoreMLQuantizer` (W8A8, per-channel weights), with the same filter.

Both are pt2e quantizers: `prepare_pt2e` / `prepare_qat_pt2e` annotate a torch.export graph,
`convert_pt2e` turns it into quantize/dequantize pairs that the lowering code of `export/`
takes as is.
"""
from __future__ import annotations

import logging

import torch
from torch import fx

from dealthdr.export.order import ancestors
from dealthdr.quantize.policy import WEIGHTED, FloatPolicy

log = logging.getLogger(__name__)

BACKENDS = ("xnnpack", "coreml")


def _restore_integer_scalars(model: fx.GraphModule) -> int:
    """Undo a float constant that the upstream pass put on integer arithmetic.

    XNNPACKQuantizer.transform_for_annotation lifts every scalar of every add/mul into a float
    buffer, integer index arithmetic included (FGMA's window offsets, `corner + o`), which turns
    an int64 sum into a float one and breaks the gathers downstream. The buffer of such a node
    gets its node's integer dtype back. Returns how many were restored."""
    fixed = 0
    for node in model.graph.nodes:
        val = node.meta.get("val")
        if node.op != "call_function" or not isinstance(val, torch.Tensor) \
                or val.is_floating_point():
            continue
        for arg in node.args:
            if isinstance(arg, fx.Node) and arg.op == "get_attr" \
                    and arg.target.startswith("_tensor_constant_"):
                const = getattr(model, arg.target)
                if const.is_floating_point() and const.dim() == 0:
                    new = torch.tensor(int(const.item()), dtype=val.dtype)
                    delattr(model, arg.target)
                    model.register_buffer(arg.target, new)
                    arg.meta["val"] = val.fake_mode.from_tensor(new, static_shapes=True) \
                        if hasattr(val, "fake_mode") else new
                    fixed += 1
    model.recompile()
    return fixed


def _with_activation_observer(config, observer: str):
    """Swap the activation observer of a static config: 'histogram' (upstream: an L2-optimal
    clipping search, ~0.13 s per observer at convert, 2.5 min for this network's ~1100) or
    'minmax' (the observed range, instant)."""
    import dataclasses

    from torchao.quantization.pt2e import MinMaxObserver

    if observer == "histogram":
        return config
    if observer != "minmax":
        raise ValueError(f"observer must be histogram or minmax, got {observer!r}")
    swap = lambda spec: spec if spec is None else dataclasses.replace(  # noqa: E731
        spec, observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2 ** -12))
    return dataclasses.replace(config, input_activation=swap(config.input_activation),
                               output_activation=swap(config.output_activation))


def check_attention_kept(model: fx.GraphModule) -> None:
    """Raise if an FGMA top-k selection no longer feeds the output of a converted graph.

    A graph pass that copies a tensor which is then written in place loses the write, and with
    it the attention branch (measured once: the model's in-place scatter, since made out of
    place). The int8 model still runs and scores like the flow-only bucket, so nothing else
    would notice."""
    seen = ancestors(next(n for n in model.graph.nodes if n.op == "output"))
    lost = [n.name for n in model.graph.nodes
            if n.target == torch.ops.aten.topk.default and n not in seen]
    if lost:
        raise RuntimeError(f"quantization cut the attention branch off the output: {lost} no "
                           "longer feed it (an in-place write into a copied tensor?)")


def share_reused_layer_inputs(model: fx.GraphModule) -> int:
    """Give every later call of a weighted layer the input quantization of its first call.

    ExecuTorch's XNNPACK lowering defines a layer's bias once per delegate graph, as int32 at
    the first call's input scale times the weight scale, and every later call of the same
    layer reads that tensor: a call whose input has its own scale adds a bias scaled for
    another. Measured: FGMA's value projection, called once per group of neighbours in the
    every-tile graph, put the int8 s = 15 and 100 short-centre programs 16 dB further from
    their converted graphs than the s = 0 ones. Calls that share one input scale share a bias
    that is right for each. Returns how many inputs now share."""
    from torchao.quantization.pt2e.quantizer import SharedQuantizationSpec

    first: dict[str, tuple[fx.Node, fx.Node]] = {}
    shared = 0
    for node in model.graph.nodes:
        if node.op != "call_function" or node.target not in WEIGHTED or len(node.args) < 2:
            continue
        weight, x = node.args[1], node.args[0]
        annotation = node.meta.get("quantization_annotation")
        if not (isinstance(weight, fx.Node) and weight.op == "get_attr" and isinstance(x, fx.Node)
                and annotation is not None and x in annotation.input_qspec_map):
            continue
        if weight.target not in first:
            first[weight.target] = (x, node)
            continue
        annotation.input_qspec_map[x] = SharedQuantizationSpec(first[weight.target])
        shared += 1
    return shared


def strip_annotations(model: fx.GraphModule, policy: FloatPolicy) -> int:
    """Remove the annotation of every node the policy keeps float. Returns how many."""
    n = 0
    for node in model.graph.nodes:
        if "quantization_annotation" in node.meta and not policy(node):
            del node.meta["quantization_annotation"]
            n += 1
    return n


def xnnpack_quantizer(policy: FloatPolicy, qat: bool, observer: str = "histogram"):
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer_utils import propagate_annotation

    class Quantizer(XNNPACKQuantizer):
        def transform_for_annotation(self, model):
            model = super().transform_for_annotation(model)
            n = _restore_integer_scalars(model)
            log.debug("restored %d integer scalars", n)
            return model

        def annotate(self, model):
            # The upstream cat annotator ignores the filter function (measured: 20 input
            # concatenations of the top level quantized under a head-only filter), so the
            # policy is enforced again before annotations propagate through views.
            model = self._annotate_for_quantization_config(model)
            strip_annotations(model, policy)
            log.debug("%d reused-layer inputs share their first call's quantization",
                      share_reused_layer_inputs(model))
            propagate_annotation(model)
            return model

    q = Quantizer()
    config = get_symmetric_quantization_config(is_per_channel=True, is_qat=qat)
    q.set_global(config if qat else _with_activation_observer(config, observer))
    q.set_filter_function(policy)
    return q


def coreml_quantizer(policy: FloatPolicy, qat: bool):
    """W8A8 for the Neural Engine: int8 symmetric weights per channel, uint8 activations.

    ExecuTorch's port of coremltools' CoreMLQuantizer (coremltools 9's own imports torch.ao
    quantizer modules that torch 2.13 no longer has). Its annotate() takes no node filter, so
    the patterns are annotated with the policy as filter, and stripped again as for XNNPACK."""
    from coremltools.optimize.torch.quantization.quantization_config import (
        LinearQuantizerConfig,
        ModuleLinearQuantizerConfig,
    )
    from executorch.backends.apple.coreml.quantizer import CoreMLQuantizer

    class Quantizer(CoreMLQuantizer):
        def annotate(self, model):
            self._annotate_all_patterns(model, self._config.global_config, policy)
            strip_annotations(model, policy)
            return model

    return Quantizer(LinearQuantizerConfig(global_config=ModuleLinearQuantizerConfig(
        quantization_scheme="symmetric", weight_dtype=torch.qint8, weight_per_channel=True,
        activation_dtype=torch.quint8)))


def make_quantizer(backend: str, policy: FloatPolicy, qat: bool = False,
                   observer: str = "histogram"):
    if backend == "xnnpack":
        return xnnpack_quantizer(policy, qat, observer)
    if backend == "coreml":
        if observer != "histogram":
            log.debug("the Core ML quantizer keeps its own observers")
        return coreml_quantizer(policy, qat)
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
