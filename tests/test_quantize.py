"""Quantization: the float islands, the quantizer fix-ups, QAT graph tying and resume, and one
small end-to-end int8 XNNPACK + Core ML run of `quantize/qat.py`."""
import json

import pytest
import torch

from dealthdr.calib.windows import make_windows
from dealthdr.model.network import level_tiles
from dealthdr.export.buckets import Bucket, BucketGraph, example_inputs
from tests.conftest import untrained_tiny

SIZE = (64, 64)


def bucket(s: float, centre: str = "short") -> Bucket:
    n = level_tiles(SIZE, 8)
    ratio = (0.5, 0.25, 0.1) if s > 0 else (0, 0, 0)
    return Bucket(s, centre, ratio, tuple(max(1, int(r * k)) if s > 0 else 0
                                          for r, k in zip(ratio, n)), 8)


@pytest.fixture(scope="module")
def tiny():
    return untrained_tiny()


@pytest.fixture(scope="module")
def program(tiny):
    b = bucket(15.0)
    return torch.export.export(BucketGraph(tiny, b),
                               example_inputs(b, SIZE, tiny.cfg.num_frames), strict=False)


@pytest.fixture(scope="module")
def windows():
    return make_windows("train", *SIZE, clips=1, seed=2)


def test_policy_keeps_coordinates_indices_and_statistics_float(program):
    from dealthdr.quantize.policy import GRID_CONSUMERS, FloatPolicy, group_of

    gm = program.module()
    policy = FloatPolicy(gm, float_groups=("merge",))
    nodes = {n.name: n for n in gm.graph.nodes}
    grids = [n.args[1] for n in gm.graph.nodes if n.target in GRID_CONSUMERS]
    assert grids and all(g in policy.coordinates for g in grids)
    # The mask threshold (a float step: relu, ceil) and what feeds it, s * D - 0.5, stay float.
    steps = [n.args[0] for n in gm.graph.nodes if n.target == torch.ops.aten.ceil.default]
    assert steps and all(x in policy.coordinates and x.args[0] in policy.coordinates
                         for x in steps)
    rsqrt_in = [n.args[0] for n in gm.graph.nodes if n.target == torch.ops.aten.rsqrt.default]
    assert rsqrt_in and all(not policy(a) for a in rsqrt_in)      # var + eps stays float
    ints = [n for n in gm.graph.nodes if n.op == "call_function"
            and isinstance(n.meta.get("val"), torch.Tensor)
            and not n.meta["val"].is_floating_point()]
    assert ints and not any(policy(n) for n in ints)
    convs = [n for n in gm.graph.nodes if n.target == torch.ops.aten.conv2d.default
             and group_of(n) == "encoder_short" and n.args[1].op == "get_attr"
             and "weight" in n.args[1].target]
    assert convs and all(policy(n) for n in convs)               # learned convs go int8
    assert not any(policy(n) for n in nodes.values() if group_of(n) == "merge")
    with pytest.raises(ValueError, match="unknown block groups"):
        FloatPolicy(gm, float_groups=("nope",))


def test_prepared_graph_quantizes_the_weights_of_int8_blocks_only(program):
    """A weight (get_attr) has no module stack; judged as `io` it made the quantizers skip
    every conv's partition whenever `io` stayed float, leaving all weights fp32."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    from dealthdr.quantize.policy import FloatPolicy, group_of
    from dealthdr.quantize.quantizers import make_quantizer

    gm = program.module()
    params = {n for n, _ in gm.named_parameters()}
    groups = {n.name: group_of(n) for n in gm.graph.nodes}
    policy = FloatPolicy(gm, float_groups=("merge", "io", "router", "decoder_l1"))
    prepared = prepare_pt2e(gm, make_quantizer("xnnpack", policy, observer="minmax"))
    observed = {}
    for n in prepared.graph.nodes:
        if n.target != torch.ops.aten.conv2d.default:
            continue
        w = n.args[1]
        learned = w.op == "get_attr" and w.target in params or (
            w.op == "call_module" and w.args[0].op == "get_attr" and w.args[0].target in params)
        if learned:
            observed.setdefault(groups[n.name], []).append(w.op == "call_module")
    for g in ("encoder_short", "encoder_long", "spynet", "middle", "middle_router",
              "decoder_l3", "upsample", "decoder", "head"):
        assert observed[g] and all(observed[g]), g                  # int8 weights
    for g in ("router", "decoder_l1"):
        assert observed[g] and not any(observed[g]), g              # kept float


@pytest.mark.e2e   # PTQ of the network
def test_int8_graph_keeps_the_attention_branch(program, windows):
    """The s15 graph's top-k selections still feed the output after convert_pt2e (with the
    model's former in-place scatter, the quantize/dequantize pair pt2e put after the zero map
    dropped the write: no top-k fed the output, and lowering removed the branch)."""
    from dealthdr.quantize.quantizers import check_attention_kept
    from dealthdr.quantize.sensitivity import ptq

    assert any(n.target == torch.ops.aten.topk.default for n in program.graph.nodes)
    assert not [n for n in program.graph.nodes if getattr(n.target, "_schema", None) is not None
                and n.target._schema.is_mutable and "detach_" not in str(n.target)]
    model = ptq(program, "xnnpack", {"float_groups": ("merge", "io")}, windows, "minmax",
                "short")
    check_attention_kept(model)            # ptq() checks it too; here it must not raise
    topk = [n for n in model.graph.nodes if n.target == torch.ops.aten.topk.default]
    assert len(topk) == 3


@pytest.mark.e2e   # PTQ of the network
def test_ptq_graph_runs_and_stays_close_to_float(program, tiny, windows):
    """Without the integer-scalar fix the prepared graph does not run (int64 * float), and
    without the float islands its output is NaN (merge) or far off."""
    from dealthdr.quantize.measure import agreement
    from dealthdr.quantize.sensitivity import ptq

    b = bucket(15.0)
    model = ptq(program, "xnnpack", {"float_groups": ("merge", "io")}, windows, "minmax",
                "short")
    fig = agreement(model, BucketGraph(tiny, b).eval(), windows, "short")
    assert 25 < fig["psnr_mu_db"] < 80, fig   # int8 differs, but not by garbage


def test_tie_parameters_within_a_centre_only():
    from dealthdr.quantize.qat_train import tie_parameters

    base = torch.nn.Linear(3, 3)

    def graph():     # its own modules, the source's parameters: what torch.export gives
        net = torch.nn.Sequential(torch.nn.Linear(3, 3))
        net[0].weight, net[0].bias = base.weight, base.bias
        return torch.fx.symbolic_trace(net)
    graphs = {n: graph() for n in ("s0_short", "s15_short", "s15_long")}
    centres = {"s0_short": "short", "s15_short": "short", "s15_long": "long"}
    shared = tie_parameters(graphs, centres)
    w = {n: dict(g.named_parameters())["0.weight"] for n, g in graphs.items()}
    assert w["s0_short"] is w["s15_short"] and w["s15_long"] is not w["s0_short"]
    assert sorted(shared) == ["long:0.bias", "long:0.weight", "short:0.bias", "short:0.weight"]
    assert w["s15_long"].data_ptr() != w["s0_short"].data_ptr()      # own storage per set
    assert torch.equal(w["s15_long"], w["s0_short"])                  # same start
    from safetensors.torch import save
    save({k: v.detach() for k, v in shared.items()})                 # no shared tensors
    everything = tie_parameters(graphs)
    assert sorted(everything) == ["0.bias", "0.weight"]
    assert all(dict(g.named_parameters())["0.weight"] is everything["0.weight"]
               for g in graphs.values())


def test_an_activation_zero_on_every_window_still_gives_a_loadable_int8_program(tmp_path):
    """A ReLU that is dead for the calibration content has the range [0, 0]: its observer's
    scale is the float-eps floor. In the shipped network's s0_short graph (SpyNet) such ranges
    made XNNPACK refuse the whole int8 program at load time (xnn_status_unsupported_parameter);
    widened, it loads. Here: exactly that quantizer gets an ordinary scale and the program
    loads and agrees with the converted graph."""
    from types import SimpleNamespace

    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)
    from executorch.runtime import Runtime
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    from dealthdr.export.to_executorch import lower
    from dealthdr.quantize.ranges import (calibrate_ranges, fake_quantizers, sync_weight_ranges,
                                          widen_empty_ranges)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dead = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.after = torch.nn.Conv2d(8, 4, 3, padding=1)

        def forward(self, frames, exposures):
            return self.after(torch.relu(self.dead(frames * exposures)))

    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():            # weights of an ordinary range for a conv with 1/255-step
        net.dead.weight.mul_(10.0)       # inputs, and a ReLU that never fires on [0, 1]
        net.dead.bias.fill_(-1000.0)
    window = SimpleNamespace(centre="short", frames=torch.rand(1, 3, 16, 16),
                             exposures=torch.ones(1, 1, 1, 1))
    inputs = (window.frames, window.exposures)
    gm = torch.export.export(net, inputs, strict=False).module()
    config = get_symmetric_quantization_config(is_per_channel=True, is_qat=True)
    gm = prepare_qat_pt2e(gm, XNNPACKQuantizer().set_global(config))
    calibrate_ranges({"g": gm}, {"g": "short"}, [window])        # as QAT starts
    sync_weight_ranges({"g": gm})                                  # as QAT freezes them
    acts = [m for m in fake_quantizers(gm) if not m.is_per_channel]
    before = [float(m.activation_post_process.calculate_qparams()[0]) for m in acts]
    assert widen_empty_ranges({"g": gm}) == 1
    assert widen_empty_ranges({"g": gm}) == 0                      # nothing left to widen
    after = [float(m.activation_post_process.calculate_qparams()[0]) for m in acts]
    changed = [(b, a) for b, a in zip(before, after) if a != b]
    floors = [float(m.activation_post_process.eps) for m in acts]
    assert len(changed) == 1 and changed[0][0] in floors          # was the scale floor
    assert changed[0][1] == pytest.approx(1 / 255)
    move_exported_model_to_eval(gm)
    converted = convert_pt2e(gm)
    program, _ = lower({"forward": torch.export.export(converted, inputs, strict=False)},
                       "xnnpack")
    path = tmp_path / "dead.pte"
    path.write_bytes(program.buffer)
    out = Runtime.get().load_program(str(path)).load_method("forward").execute(list(inputs))[0]
    with torch.no_grad():
        ref = converted(*inputs)
    assert torch.allclose(out, ref, atol=0.05 * ref.abs().max().item() + 1e-6)


def test_methods_sharing_activation_ranges_store_their_delegate_calls_once():
    """Two graphs of one network (tied weights) calibrated on inputs of different ranges, as the
    two centre exposures are: with a range per graph their int8 delegate calls differ, and the
    .pte stores both; with `share_ranges` every common activation gets the union of the two
    ranges and the .pte stores one. A graph of another artifact keeps its own ranges."""
    from types import SimpleNamespace

    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    from dealthdr.export.coverage import pte_bytes
    from dealthdr.export.to_executorch import lower
    from dealthdr.quantize.qat_train import tie_parameters
    from dealthdr.quantize.ranges import (activation_quantizers, calibrate_ranges,
                                          share_ranges, sync_weight_ranges)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.b = torch.nn.Conv2d(8, 4, 3, padding=1)

        def forward(self, frames, exposures):
            return self.b(torch.relu(self.a(frames * exposures)))

    torch.manual_seed(0)
    net = Net().eval()
    windows = [SimpleNamespace(centre=c, frames=torch.rand(1, 3, 16, 16) * k,
                               exposures=torch.ones(1, 1, 1, 1)) for c, k in
               (("short", 1.0), ("long", 4.0), ("other", 2.0))]
    inputs = (windows[0].frames, windows[0].exposures)
    config = get_symmetric_quantization_config(is_per_channel=True, is_qat=True)

    def stored_payloads(share: bool) -> int:
        graphs = {w.centre: prepare_qat_pt2e(
            torch.export.export(net, inputs, strict=False).module(),
            XNNPACKQuantizer().set_global(config)) for w in windows}
        tie_parameters(graphs)
        calibrate_ranges(graphs, {c: c for c in graphs}, windows)
        sync_weight_ranges(graphs)
        if share:
            alone = {k: m.activation_post_process.max_val.clone()
                     for k, m in activation_quantizers(graphs["other"]).items()}
            groups = {"short": "s15", "long": "s15", "other": "s0"}
            assert share_ranges(graphs, groups) == len(alone)
            for key, m in activation_quantizers(graphs["other"]).items():
                assert torch.equal(m.activation_post_process.max_val, alone[key])
            pairs = zip(activation_quantizers(graphs["short"]).values(),
                        activation_quantizers(graphs["long"]).values())
            assert all(torch.equal(x.scale, y.scale) for x, y in pairs)
        programs = {}
        for name in ("short", "long"):
            move_exported_model_to_eval(graphs[name])
            programs[f"forward_{name}"] = torch.export.export(convert_pt2e(graphs[name]),
                                                              inputs, strict=False)
        program, _ = lower(programs, "xnnpack")
        return pte_bytes(program.buffer)["delegate_payloads_unique"]

    assert stored_payloads(share=False) == 2
    assert stored_payloads(share=True) == 1


def test_a_layer_called_on_inputs_of_different_ranges_runs_as_its_converted_graph():
    """One linear called on four inputs of different ranges (FGMA's value projection runs once
    per group of neighbours). XNNPACK's lowering quantizes the layer's bias once, at the
    first call's input scale; with the calls' inputs sharing that scale (the project's
    quantizer) every call matches the converted graph to a step or two of its output grid.
    Each call with its own input scale (upstream's annotation alone), the later calls add
    a wrongly scaled bias: 22-80 output steps off in this graph."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)
    from executorch.runtime import Runtime
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from dealthdr.export.to_executorch import lower
    from dealthdr.quantize.policy import FloatPolicy
    from dealthdr.quantize.quantizers import xnnpack_quantizer

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(16, 16)

        def forward(self, *parts):
            return torch.cat([self.proj(p) for p in parts])

    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        net.proj.bias.uniform_(-2.0, 2.0)     # a bias that matters at the output's scale
    inputs = tuple(torch.randn(64, 16) * r for r in (1.0, 4.0, 0.25, 2.0))

    def steps_off(quantizer) -> list[float]:
        gm = torch.export.export(net, inputs, strict=False).module()
        gm = prepare_pt2e(gm, quantizer(gm))
        gm(*inputs)
        converted = convert_pt2e(gm)
        program, _ = lower({"forward": torch.export.export(converted, inputs, strict=False)},
                           "xnnpack")
        out = Runtime.get().load_program(program.buffer).load_method("forward").execute(
            list(inputs))[0]
        with torch.no_grad():
            ref = converted(*inputs)
        step = float(ref.unique().diff().min())          # the output's quantization step
        return [float((o - r).abs().max()) / step for o, r in zip(out.chunk(4), ref.chunk(4))]

    ours = steps_off(lambda gm: xnnpack_quantizer(FloatPolicy(gm), qat=False, observer="minmax"))
    upstream = steps_off(lambda gm: XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True)))
    assert max(ours) <= 2.0, ours
    assert max(upstream[1:]) > 4.0, upstream      # the hazard is still there upstream


def test_resume_refuses_a_state_of_other_graphs_with_a_clear_error(tmp_path):
    """Same settings, other graphs (the network or its export changed between runs): the
    resume names the state folder and what to do, instead of torch's size-mismatch dump."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    from dealthdr.quantize.qat_train import load_state, save_state, tie_parameters

    def prepared(width):
        net = torch.nn.Sequential(torch.nn.Conv2d(3, width, 3, padding=1), torch.nn.ReLU())
        x = torch.rand(1, 3, 8, 8)
        gm = torch.export.export(net, (x,), strict=False).module()
        config = get_symmetric_quantization_config(is_per_channel=True, is_qat=True)
        gm = prepare_qat_pt2e(gm, XNNPACKQuantizer().set_global(config))
        gm(x)
        shared = tie_parameters({"g": gm})
        return {"g": gm}, shared, torch.optim.Adam(shared.values())

    graphs, shared, opt = prepared(8)
    save_state(tmp_path, graphs, shared, opt, 1, [0.1], {"k": 1})
    assert load_state(tmp_path, *prepared(8), {"k": 1})[0] == 1
    with pytest.raises(ValueError, match="graphs other than this run's"):
        load_state(tmp_path, *prepared(4), {"k": 1})


def test_resume_starts_afresh_from_a_state_of_other_code(tmp_path, caplog):
    """Other code traces other graphs whose observers can carry the same names and shapes, so
    a state saved by it would load without an error into the wrong ranges: it is set aside
    (training starts at step 0), while other settings are still refused."""
    from dealthdr.quantize.qat_train import load_state, save_state, tie_parameters

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1))
    gm = torch.export.export(net, (torch.rand(1, 3, 8, 8),), strict=False).module()
    shared = tie_parameters({"g": gm})
    opt = torch.optim.Adam(shared.values())
    save_state(tmp_path, {"g": gm}, shared, opt, 7, [0.1], {"k": 1, "code": "old"})
    assert load_state(tmp_path, {"g": gm}, shared, opt, {"k": 1, "code": "old"})[0] == 7
    with caplog.at_level("WARNING"):
        assert load_state(tmp_path, {"g": gm}, shared, opt, {"k": 1, "code": "new"}) == (0, [])
    assert "saved by other code" in caplog.text
    with pytest.raises(ValueError, match="QAT state of other settings"):
        load_state(tmp_path, {"g": gm}, shared, opt, {"k": 2, "code": "new"})


@pytest.mark.e2e   # QAT training runs
def test_qat_graphs_share_weights_and_resume(tiny, windows, tmp_path):
    from dealthdr.quantize.qat_train import QATConfig, prepare_graphs, train

    buckets = [bucket(0.0), bucket(15.0, "long")]   # the default ties across centres too

    def graphs():
        return prepare_graphs(tiny, buckets, SIZE, "xnnpack", ("merge", "io"))[0]

    centres = {b.name: b.centre for b in buckets}
    teachers = {b.name: BucketGraph(tiny, b).eval() for b in buckets}
    before = {k: p.detach().clone() for k, p in tiny.named_parameters()}
    full = graphs()
    ref = train(full, centres, windows, QATConfig(steps=3, lr=1e-4, ckpt_every=1),
                tmp_path / "a", teachers)
    w0 = dict(full["s0_short"].named_parameters())
    w15 = dict(full["s15_long"].named_parameters())
    shared = set(w0) & set(w15)
    assert shared and all(w0[k] is w15[k] for k in shared)        # one set of weights
    # tied weights leave with one int8 range in every graph: identical bytes, stored once
    r0, r15 = _weight_scales(full["s0_short"]), _weight_scales(full["s15_long"])
    assert set(r0) & set(r15) and all(torch.equal(r0[k], r15[k]) for k in set(r0) & set(r15))
    trained = {k.removeprefix("model."): p for k, p in w15.items()}
    assert any(not torch.equal(before[k], p) for k, p in trained.items())   # QAT moved them
    # ... but not the float model they were exported from (the fp32 reference of the report)
    assert all(torch.equal(before[k], p) for k, p in tiny.named_parameters())

    # a kill after step 2's checkpoint: the pointer still names step 2 (step 3 never landed)
    pointer = tmp_path / "a" / "latest.json"
    doc = json.loads(pointer.read_text())
    pointer.write_text(json.dumps({**doc, "step": 2, "losses": ref["losses"][:2]}))
    resumed = graphs()  # a fresh process: new graphs, state from disk
    rec = train(resumed, centres, windows, QATConfig(steps=3, lr=1e-4, ckpt_every=1),
                tmp_path / "a", teachers)
    assert rec["losses"][:2] == ref["losses"][:2]
    assert rec["losses"][2] == pytest.approx(ref["losses"][2], rel=1e-5)
    fresh = train(graphs(), centres, windows, QATConfig(steps=3, lr=1e-4), tmp_path / "b",
                  teachers)
    assert fresh["losses"] == pytest.approx(ref["losses"], rel=1e-5)   # deterministic
    gt_only = train(graphs(), centres, windows, QATConfig(steps=3, lr=1e-4, distill=0.0),
                    tmp_path / "d")
    assert gt_only["losses"][0] != pytest.approx(ref["losses"][0], rel=1e-3)  # the mix counts
    spare = graphs()   # every refusal comes before a step, so one set serves them all
    with pytest.raises(ValueError, match="share"):
        train(spare, centres, windows, QATConfig(steps=3, distill=1.5), tmp_path / "f",
              teachers)
    with pytest.raises(ValueError, match="one step per graph"):
        train(spare, centres, windows, QATConfig(steps=1), tmp_path / "c", teachers)
    with pytest.raises(ValueError, match="teacher"):
        train(spare, centres, windows, QATConfig(steps=3), tmp_path / "e")
    with pytest.raises(ValueError, match="other settings"):   # never loaded into other graphs
        train(spare, centres, windows, QATConfig(steps=3, lr=1e-4, ckpt_every=1),
              tmp_path / "a", teachers, settings={"float_groups": ["merge"]})


def test_code_digest_follows_every_source_file(tmp_path):
    from dealthdr.quantize.resume import code_digest
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "fgma.py").write_text("x = 1\n")
    (tmp_path / "a.py").write_text("")
    first = code_digest(tmp_path)
    assert code_digest(tmp_path) == first
    (tmp_path / "model" / "fgma.py").write_text("x = 2\n")
    assert code_digest(tmp_path) != first
    (tmp_path / "model" / "fgma.py").write_text("x = 1\n")
    (tmp_path / "model" / "fgma.py").rename(tmp_path / "model" / "other.py")
    assert code_digest(tmp_path) != first                   # a moved file is other code


def test_finished_stages_are_reused_only_with_the_same_settings(tmp_path):
    from dealthdr.export.config import parse_config
    from dealthdr.quantize.config import QuantizeConfig
    from dealthdr.quantize.qat import build_parser
    from dealthdr.quantize.resume import Finished, fingerprint

    def parse(argv):
        return parse_config(build_parser(), QuantizeConfig, argv)
    key = fingerprint(parse([]), "abc")
    assert key == fingerprint(parse(["--out", "x", "--threads", "1", "--backend", "coreml"]),
                              "abc")                       # where and how fast: same result
    assert key != fingerprint(parse(["--lr", "2e-5"]), "abc")
    assert key != fingerprint(parse([]), "another checkpoint")
    assert key != fingerprint(parse([]), "abc", code="another version of the code")
    stage, again = tmp_path / "stage", tmp_path / "again"
    stage.mkdir(), again.mkdir()
    (stage / "a.pte").write_bytes(b"int8")
    (stage / "b.mlpackage").mkdir()
    (stage / "b.mlpackage" / "w.bin").write_bytes(b"w")
    Finished(tmp_path / "state", key).save("xnnpack", stage, ["a.pte", "b.mlpackage"],
                                           {"section": {"x": 1.5}})
    assert Finished(tmp_path / "state", "other").load("xnnpack", again) is None
    assert not list(again.iterdir())
    assert Finished(tmp_path / "state", key).load("coreml", again) is None
    assert Finished(tmp_path / "state", key).load("xnnpack", again) == {"section": {"x": 1.5}}
    assert (again / "a.pte").read_bytes() == b"int8"
    assert (again / "b.mlpackage" / "w.bin").read_bytes() == b"w"
    (tmp_path / "state" / "finished" / "xnnpack" / "a.pte").unlink()   # damaged: redo it
    assert Finished(tmp_path / "state", key).load("xnnpack", tmp_path) is None


@pytest.mark.e2e   # quantize/qat.py end to end
def test_qat_cli_writes_int8_pte_that_runs_and_a_report(tmp_path, monkeypatch):
    """The XNNPACK and ONNX legs end to end: an int8 .pte that loads and runs in the ExecuTorch
    runtime, NNCF's QDQ model gated in onnxruntime, the report, nothing left behind. The first
    run is killed after both legs; the rerun reuses them instead of running them again."""
    from executorch.runtime import Runtime

    import dealthdr.quantize.qat as qat
    from dealthdr.quantize.qat import main

    out = tmp_path / "int8"
    argv = ["--size", "64x64", "--s-buckets", "15", "--centre", "short", "--steps", "1",
            "--backend", "xnnpack,onnx", "--calib-clips", "1", "--train-clips", "1",
            "--parity-clips", "1", "--no-sensitivity", "--no-latency", "--out", str(out)]

    def killed(*a, **k):
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(qat, "write_report", killed)
        with pytest.raises(KeyboardInterrupt):
            main(argv)
    assert not out.exists()
    finished = tmp_path / "int8.qat-state" / "finished"
    assert sorted(p.name for p in finished.iterdir()) == ["onnx", "xnnpack"]
    first = {p.name: p.read_bytes() for d in finished.iterdir() for p in d.iterdir()
             if p.suffix in (".pte", ".onnx")}
    with monkeypatch.context() as m:
        m.setattr(qat, "run_stage", killed)       # a leg that ran again would raise
        assert main(argv) == 0
    assert {n: (out / n).read_bytes() for n in first} == first
    report = json.loads((out / "quantize_report.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    (pte,) = [a for a in manifest["artifacts"] if a["backend"] == "executorch-xnnpack"]
    assert pte["precision"] == "int8"
    assert pte["parity"]["passed"] and pte["parity"]["psnr_mu_db"] >= 30
    program = Runtime.get().load_program(str(out / pte["file"]))
    frames, exposures = example_inputs(bucket(15.0), SIZE, pte["input_shape"]["frames"][1])
    y = program.load_method("forward_short").execute([frames, exposures])[0]
    assert y.shape == (1, 3, 64, 64) and torch.isfinite(y).all()
    row = report["backends"]["xnnpack"]["buckets"]["s15_short"]
    assert {"fp32", "ptq", "qat", "qat_gap_db", "ptq_gap_db"} <= set(row)
    assert report["backends"]["xnnpack"]["qat"]["config"]["distill"] == 1.0
    assert report["backends"]["xnnpack"]["latency"] is None       # --no-latency
    assert "| xnnpack | s15_short |" in (out / "quantize_report.md").read_text()
    (qdq,) = [a for a in manifest["artifacts"] if a["backend"] == "onnx"]
    assert qdq["precision"] == "int8" and qdq["qdq_pairs"] > 0 and qdq["parity"]["passed"]
    onnx_row = report["backends"]["onnx"]["buckets"]["s15_short"]
    assert onnx_row["qat"] is None and abs(onnx_row["ptq_gap_db"]) < 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8", "int8.qat-state"]


@pytest.mark.slow   # ~4-6 min of coremltools conversion; CI (.ci/run) deselects slow tests
def test_qat_cli_coreml_package_is_w8a8_with_fp32_warp(tmp_path):
    """The Core ML leg, a flow-only bucket and a sparse attention bucket (selected tiles:
    gathers and the slot-map scatter): quantize/dequantize ops in the package (W8A8, not
    fp16), resample kept fp32, no map-sized folded constant in any function (each would be
    stored per function, and the package's bytes would grow with the buckets), numeric parity
    recorded as pending."""
    from dealthdr.calib.buckets import FORMAT
    from dealthdr.quantize.qat import main

    size = 32
    cal = tmp_path / "buckets.json"
    cal.write_text(json.dumps({"format": FORMAT, "buckets": [
        {"s": "0", "ratio": [0, 0, 0]}, {"s": "1", "ratio": [0.5, 0.25, 0.1]}]}))
    out = tmp_path / "ml"
    assert main(["--size", f"{size}x{size}", "--s-buckets", "0,1", "--centre", "short",
                 "--buckets", str(cal), "--steps", "2", "--backend", "coreml",
                 "--calib-clips", "1", "--train-clips", "1", "--parity-clips", "1",
                 "--no-sensitivity", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    rows = {a["s"]: a for a in manifest["artifacts"] if a["backend"] == "coreml"}
    assert sorted(rows) == ["0", "1"]
    assert rows["1"]["structure"]["op_histogram"].get("topk", 0) > 0  # tiles are selected
    for ml in rows.values():
        hist = ml["structure"]["op_histogram"]
        assert hist.get("quantize", 0) > 0 and hist.get("dequantize", 0) > 0
        assert ml["structure"]["resample_fp32"] and ml["parity"]["pending"]
        # smaller than one map of the 4 neighbours (FGMA's band bias, 32 x 96, is the largest)
        assert ml["structure"]["largest_folded_constant"] < 4 * size * size
        assert ml["precision"] == "int8" and (out / ml["file"]).is_dir()


def test_activation_ranges_are_shared_only_in_xnnpack_programs_of_one_weight_set():
    """The flag reaches the config, and sharing follows it: on by default for XNNPACK with one
    weight set, off with --no-share-ranges, with a weight set per centre, and for Core ML."""
    from dealthdr.export.config import parse_config
    from dealthdr.quantize.config import QuantizeConfig
    from dealthdr.quantize.qat import build_parser, shares

    def cfg(*flags):
        return parse_config(build_parser(), QuantizeConfig, list(flags))

    assert shares(cfg(), "xnnpack")
    assert not shares(cfg("--no-share-ranges"), "xnnpack")
    assert not shares(cfg("--tie", "centre"), "xnnpack")
    assert not shares(cfg(), "coreml")


def test_qat_cli_refuses_bad_input(tmp_path, capsys):
    from dealthdr.quantize.qat import main

    for argv in (["--backend", "tpu"], ["--float-groups", "everything"]):
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--out", str(tmp_path / "x")])
        assert exc.value.code == 2
    assert main(["--steps", "0", "--out", str(tmp_path / "y")]) == 2
    assert "--steps" in capsys.readouterr().err and not (tmp_path / "y").exists()
    # fewer steps than graphs (4 s-buckets x 2 centres): refused before any calibration
    assert main(["--steps", "7", "--out", str(tmp_path / "z")]) == 2
    assert "7 steps for 8 graphs" in capsys.readouterr().err and not (tmp_path / "z").exists()


def _weight_scales(gm) -> dict:
    """{weight name: its per-channel fake quantizer's scale} of a prepared graph."""
    out = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.args and \
                getattr(node.args[0], "op", None) == "get_attr":
            mod = gm.get_submodule(node.target)
            if getattr(mod, "is_per_channel", False):
                out[node.args[0].target] = mod.scale.detach().clone()
    return out
