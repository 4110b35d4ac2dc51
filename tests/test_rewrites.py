"""Export rewrites on a quantized graph: constant propagation must keep int8 weights int8."""
import torch
from torch import nn


def _int8_conv_program():
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(16, 64, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(64, 16, 3, padding=1)).eval()
    x = torch.rand(1, 16, 24, 24)
    gm = torch.export.export(net, (x,), strict=False).module()
    q = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    gm = prepare_pt2e(gm, q)
    gm(x)
    gm = convert_pt2e(gm)
    return torch.export.export(gm, (x,), strict=False), gm, x


def test_constant_propagation_keeps_weight_dequantize_and_int8_storage():
    from executorch.exir._serialize._program import deserialize_pte_binary

    from export.rewrites import apply_rewrites
    from export.to_executorch import lower

    program, converted, x = _int8_conv_program()
    folded = apply_rewrites(program)
    dq = [n for n in folded.graph.nodes
          if n.target == torch.ops.quantized_decomposed.dequantize_per_channel.default]
    assert len(dq) == 2                                   # one per conv weight, not folded
    assert all(n.args[0].meta["val"].dtype == torch.int8 for n in dq)

    prog, _ = lower({"forward": program}, "xnnpack")
    stored = sum(len(b) for b in deserialize_pte_binary(prog.buffer).named_data.buffers)
    weights = 2 * 16 * 64 * 9
    assert stored < 2 * weights       # int8: ~1 byte per weight (fp32 would be 4)

    from executorch.runtime import Runtime

    y = Runtime.get().load_program(prog.buffer).load_method("forward").execute([x])[0]
    with torch.no_grad():
        ref = converted(x)
    assert torch.allclose(y, ref, atol=0.05 * ref.abs().max().item())
