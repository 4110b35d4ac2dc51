"""Export: buckets, the staging folder, the parity gate, and real exports at a small size."""
import json
import math

import numpy as np
import pytest
import torch

from dealthdr.calib.windows import make_windows
from dealthdr.checkpoint import shipped_path
from dealthdr.export.artifacts import digest, staging_dir
from dealthdr.model.inputs import neighbour_offsets, window_pattern
from dealthdr.model.network import level_tiles
from dealthdr.export.buckets import BucketGraph, make_buckets
from dealthdr.export.gate import GateFailed, run_gate
from tests.conftest import untrained_tiny

SIZE = (64, 64)
CAL = {"buckets": [{"s": "0", "ratio": [0, 0, 0]}, {"s": "15", "ratio": [0.5, 0.25, 0.1]},
                   {"s": "inf", "ratio": [1, 1, 1]}]}


@pytest.fixture(scope="module")
def tiny():
    return untrained_tiny()


@pytest.fixture(scope="module")
def windows():
    return make_windows("heldout", *SIZE, clips=1, seed=1)


def test_window_pattern_alternates_around_the_centre():
    assert window_pattern("short", 5) == (False, True, False, True, False)
    assert window_pattern("long", 5) == (True, False, True, False, True)
    assert window_pattern("short", 7) == (True, False, True, False, True, False, True)
    assert window_pattern("long", 7) == (False, True, False, True, False, True, False)
    assert window_pattern("long", 3) == (False, True, False)
    assert neighbour_offsets(5) == (-2, -1, 1, 2)
    assert neighbour_offsets(7) == (-3, -2, -1, 1, 2, 3)
    with pytest.raises(ValueError, match="centre must be one of"):
        window_pattern("medium", 5)
    for bad in (4, 1, 0):
        with pytest.raises(ValueError, match="odd number of frames >= 3"):
            window_pattern("short", bad)
        with pytest.raises(ValueError, match="odd number of frames >= 3"):
            neighbour_offsets(bad)


def test_bench_inputs_follow_the_window_pattern():
    """The benchmark worker builds its inputs without torch; they must match the export's."""
    from dealthdr.bench.worker import make_inputs

    for frames in (5, 7):
        for centre in ("short", "long"):
            f, e = make_inputs(centre, (8, 8), frames=frames)
            assert f.shape == (1, frames, 3, 8, 8) and e.shape == (1, frames)
            assert tuple(bool(v > 1) for v in e[0]) == window_pattern(centre, frames)


def test_make_buckets_budgets():
    n1, n2, n3 = level_tiles(SIZE, 8)
    assert (n1, n2, n3) == (8 * 8, 4 * 4, 2 * 2)
    bs = make_buckets(CAL, [0.0, 15.0, math.inf], SIZE, ("short", "long"), 8)
    assert [b.name for b in bs] == ["s0_short", "s0_long", "s15_short", "s15_long",
                                   "sinf_short", "sinf_long"]
    assert bs[0].budget == (0, 0, 0)
    assert bs[2].budget == (math.ceil(0.5 * n1), math.ceil(0.25 * n2), math.ceil(0.1 * n3))
    assert bs[4].budget == (n1, n2, n3)
    with pytest.raises(ValueError, match="no entry for s"):
        make_buckets(CAL, [1.0], SIZE, ("short",), 8)
    with pytest.raises(ValueError, match="recalibrate"):
        make_buckets({**CAL, "tile": 4}, [15.0], SIZE, ("short",), 8)


def test_windows_have_both_centres_and_match_their_pattern(windows):
    assert [w.centre for w in windows] == ["short", "long"]
    for w in windows:
        assert w.frames.shape == (1, 5, 3, *SIZE) and w.exposures.shape == (1, 5)
        long_ = tuple(bool(e > 1) for e in w.exposures[0])
        assert long_ == window_pattern(w.centre, 5)
    seven = make_windows("heldout", 16, 16, clips=1, seed=1, frames=7)
    assert sorted(w.centre for w in seven) == ["long", "short"]
    for w in seven:
        assert w.frames.shape == (1, 7, 3, 16, 16)
        assert tuple(bool(e > 1) for e in w.exposures[0]) == window_pattern(w.centre, 7)


def test_staging_dir_is_atomic(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with staging_dir(out, force=False) as stage:
            (stage / "half.bin").write_bytes(b"x")
            raise RuntimeError("export failed")
    assert not out.exists() and not list(tmp_path.iterdir())
    with staging_dir(out, force=False) as stage:
        (stage / "a.bin").write_bytes(b"abc")
    assert (out / "a.bin").read_bytes() == b"abc"
    with pytest.raises(ValueError, match="--force"):
        with staging_dir(out, force=False):
            pass
    with staging_dir(out, force=True) as stage:
        (stage / "b.bin").write_bytes(b"b")
    assert sorted(p.name for p in out.iterdir()) == ["b.bin"]
    assert digest(out)[0] == 1 and len(digest(out / "b.bin")[1]) == 64


def test_gate_passes_the_model_itself_and_fails_a_wrong_artifact(tiny, windows):
    bucket = make_buckets(CAL, [15.0], SIZE, ("short",), 8)[0]
    graph = BucketGraph(tiny, bucket)
    with torch.no_grad():
        ok = run_gate(lambda f, e: graph(f, e), tiny, bucket, windows, "fp32", "eager")
    assert ok["passed"] and ok["max_abs"] == 0
    with torch.no_grad(), pytest.raises(GateFailed, match="threshold"):
        run_gate(lambda f, e: graph(f, e) * 1.2, tiny, bucket, windows, "fp32", "eager")


@pytest.mark.e2e   # ONNX export of the network
def test_onnx_export_matches_torch_and_dynamic(tiny, windows, tmp_path):
    pytest.importorskip("onnxruntime")
    from dealthdr.export.to_onnx import export_onnx, onnx_runner

    bucket = make_buckets(CAL, [15.0], SIZE, ("long",), 8)[0]
    path = tmp_path / "m.onnx"
    export_onnx(tiny, bucket, SIZE, path)
    res = run_gate(onnx_runner(path), tiny, bucket, windows, "fp32", "onnxruntime")
    assert res["passed"] and res["max_abs"] < 1e-4
    if res["vs_dynamic"]["windows_fitting_bucket"]:
        assert res["vs_dynamic"]["max_abs"] < 1e-4


@pytest.mark.e2e   # ONNX export of the network
def test_onnx_export_of_merge_attention_matches_torch(windows, tmp_path):
    """With `merge_attention` the exported graph carries the neighbours' pixels through the
    level-1 attention of a bucket (gathered tiles) to the merge, as eager does."""
    pytest.importorskip("onnxruntime")
    import dataclasses

    from dealthdr.export.to_onnx import export_onnx, onnx_runner
    from dealthdr.model import create_model, get_config

    torch.manual_seed(0)
    model = create_model(dataclasses.replace(get_config("tiny"), merge_attention=True)).eval()
    model.head.reset_parameters()
    bucket = make_buckets(CAL, [15.0], SIZE, ("short",), 8)[0]
    path = tmp_path / "m.onnx"
    export_onnx(model, bucket, SIZE, path)
    res = run_gate(onnx_runner(path), model, bucket, windows, "fp32", "onnxruntime")
    assert res["passed"] and res["max_abs"] < 1e-4
    plain = create_model("tiny").eval()
    plain.load_state_dict(model.state_dict())
    win = windows[0]
    with torch.no_grad():  # the pixels path is in the graph: the output is not the plain one
        diff = model(win.frames, win.exposures, s=15.0) - plain(win.frames, win.exposures, s=15.0)
    assert diff.abs().max() > 1e-4


@pytest.mark.e2e   # ExecuTorch lowering + bundled program
def test_executorch_xnnpack_program_runs_and_matches(tiny, windows, tmp_path):
    from dealthdr.export.buckets import export_program
    from dealthdr.export.to_executorch import lower, pte_runner

    b = make_buckets(CAL, [15.0], SIZE, ("short", "long"), 8)
    progs = {f"forward_{x.centre}": export_program(tiny, x, SIZE) for x in b}
    exec_prog, cov = lower(progs, "xnnpack")
    path = tmp_path / "m.pte"
    path.write_bytes(exec_prog.buffer)
    for x in b:
        res = run_gate(pte_runner(path, f"forward_{x.centre}"), tiny, x, windows, "fp32", "et")
        assert res["passed"] and res["max_abs"] < 1e-4
        c = cov[f"forward_{x.centre}"]
        assert 0.9 < c["flop_share"] <= 1 and c["ops_delegated"] < c["ops_total"]
        assert "convolution" not in c["not_delegated"]  # every conv runs in XNNPACK
        # Masks are float steps and borders slices: no comparison, bool cast or index gather
        # (each a multi-millisecond portable kernel per full-size map) outside the delegate.
        assert not {"gt", "ge", "le", "lt", "index"} & set(c["not_delegated"]), c

    # BundledProgram: held-out inputs and expected outputs travel with the program. This
    # runtime build has no bundled-IO verifier, so the test does what a device harness does:
    # run the bundled program on its bundled inputs and compare with its expected outputs.
    from dealthdr.export.to_executorch import bundle
    assert _bundle_max_error(bundle(exec_prog, {f"forward_{x.centre}": (tiny, x) for x in b},
                                    windows)) < 1e-5
    swapped = bundle(exec_prog, {"forward_short": (tiny, b[1]), "forward_long": (tiny, b[0])},
                     windows)  # another graph's expectations must not verify
    assert _bundle_max_error(swapped) > 1e-3

    # The planned activation arena is reported, and a run that cannot fit is refused up front.
    from dealthdr.export import to_executorch
    arena = to_executorch.planned_bytes(exec_prog)
    frame_bytes = 4 * 5 * 3 * SIZE[0] * SIZE[1]
    assert set(arena) == set(progs) and all(v > 10 * frame_bytes for v in arena.values())
    to_executorch.check_runnable("forward_short", arena["forward_short"])
    with pytest.raises(ValueError, match="parity gate cannot run"):
        to_executorch.check_runnable("forward_short", to_executorch.available_bytes())

    # The byte split adds up, and the two methods store one copy of the weights.
    from dealthdr.export.coverage import pte_bytes
    split = pte_bytes(exec_prog.buffer)
    assert split["total"] == len(exec_prog.buffer) == sum(
        split[k] for k in ("stored_tensors", "delegate_payloads", "program", "padding"))
    assert 0 <= split["padding"] < 0.05 * split["total"] and split["weight_scales"] == 0
    weight_bytes = 4 * sum(p.numel() for p in tiny.parameters())
    assert 0.5 * weight_bytes < split["stored_tensors"] < 1.1 * weight_bytes
    assert split["delegate_calls"] == sum(c["delegate_calls"] for c in cov.values())


def test_caller_inputs_are_read_in_place_not_copied_into_the_arena(tmp_path):
    """A streaming fuse reads its features where the frame loop holds them. The inputs get no
    arena place, and each call reads the tensors it is given (a stale copy would repeat the
    first call's output)."""
    from executorch.runtime import Runtime

    from dealthdr.export.to_executorch import input_memory, lower

    net = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.ReLU()).eval()
    x = torch.rand(1, 4, 16, 16)

    def programs():  # lowering consumes its programs: one export per call
        return {"forward": torch.export.export(net, (x,), strict=False)}

    planned, _ = lower(programs(), "xnnpack", rewrite=False)
    shared, _ = lower(programs(), "xnnpack", rewrite=False, caller_inputs=True)
    assert input_memory(planned) == {"forward": "planned"}
    assert input_memory(shared) == {"forward": "caller"}
    path = tmp_path / "shared.pte"
    path.write_bytes(shared.buffer)
    method = Runtime.get().load_program(str(path)).load_method("forward")
    for seed in (1, 2):
        y = torch.rand(1, 4, 16, 16, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            torch.testing.assert_close(method.execute([y])[0], net(y), atol=1e-5, rtol=1e-5)


def _bundle_max_error(data: bytes) -> float:
    from executorch.devtools.bundled_program.serialize import (
        deserialize_from_flatbuffer_to_bundled_program)
    from executorch.runtime import Runtime

    def tensor(v):
        t = v.val
        return torch.from_numpy(np.frombuffer(t.data, np.float32).reshape(t.sizes).copy())

    bp = deserialize_from_flatbuffer_to_bundled_program(data)
    program = Runtime.get().load_program(bp.program)
    worst = 0.0
    for suite in bp.method_test_suites:
        method = program.load_method(suite.method_name)
        assert suite.test_cases
        for case in suite.test_cases:
            out = method.execute([tensor(v) for v in case.inputs])[0]
            worst = max(worst, float((out - tensor(case.expected_outputs[0])).abs().max()))
    return worst


@pytest.mark.e2e   # Core ML conversion
def test_coreml_package_structure_keeps_warp_fp32(tiny, tmp_path):
    pytest.importorskip("coremltools")
    from dealthdr.export.coreml import convert, save_multifunction, validate_package

    bs = make_buckets(CAL, [0.0, 15.0], SIZE, ("short",), 8)
    parts = []
    for b in bs:
        ml = convert(tiny, b, SIZE, "fp16", "iOS18", "all")
        parts.append((b.name, tmp_path / f"{b.name}.mlpackage"))
        ml.save(str(parts[-1][1]))
    merged = tmp_path / "all.mlpackage"
    save_multifunction(parts, merged)
    report = validate_package(merged, ["s0_short", "s15_short"], SIZE, tiny.cfg.num_frames,
                              "fp16")
    assert report["s15_short"]["resample_ops"] > 0 and report["s15_short"]["resample_fp32"]
    assert report["s0_short"]["op_histogram"].get("topk", 0) == 0  # s=0: no attention path
    for r in report.values():  # no feature map of zeros stored as a constant (was 16 x 4 maps)
        assert r["largest_folded_constant"] < 4 * SIZE[0] * SIZE[1]
    assert report["s15_short"]["op_histogram"].get("topk", 0) > 0
    single = max(digest(p)[0] for _, p in parts)
    assert digest(merged)[0] < 1.5 * single  # weights are shared, not stored per function
    texts = sum(r["program_text_bytes"] for r in report.values())
    weights = {r["package_weight_bytes"] for r in report.values()}
    assert len(weights) == 1 and min(weights) > 0 and all(r["program_text_bytes"] > 0
                                                          for r in report.values())
    assert 0.9 * digest(merged)[0] < texts + min(weights) <= digest(merged)[0]
    with pytest.raises(ValueError, match="functions"):
        validate_package(merged, ["s0_short"], SIZE, tiny.cfg.num_frames, "fp16")


def _dataflow(mlmodel) -> tuple[list, list]:
    """The computation of a converted model with every name abstracted away: per non-const op
    in order, its type and each input as a function input's name, a constant's dtype, shape
    and value, or (producing op, output) by position."""
    fn = mlmodel._mil_program.functions["main"]
    where = {}

    def ref(v):
        if isinstance(v, (list, tuple)):
            return tuple(ref(x) for x in v)
        if v.op is None:
            return ("input", v.name)
        if v.op.op_type == "const":
            val = v.val
            if isinstance(val, (str, bool)):
                return ("const", val)
            val = np.asarray(val)
            return ("const", val.dtype.str, val.shape, val.tobytes())
        return where[v]

    ops = []
    for op in fn.operations:
        if op.op_type == "const":
            continue
        ops.append((op.op_type, tuple(sorted((k, ref(v)) for k, v in op.inputs.items()))))
        for i, out in enumerate(op.outputs):
            where[out] = (len(ops) - 1, i)
    return ops, [ref(v) for v in fn.outputs]


@pytest.mark.e2e   # Core ML conversion, twice
def test_coreml_compact_text_computes_the_same_in_less_text(tiny, tmp_path):
    pytest.importorskip("coremltools")
    from dealthdr.export.coreml import convert

    b = make_buckets(CAL, [15.0], SIZE, ("short",), 8)[0]
    readable = convert(tiny, b, SIZE, "fp16", "iOS18", "all", readable_names=True)
    compact = convert(tiny, b, SIZE, "fp16", "iOS18", "all")
    assert _dataflow(compact) == _dataflow(readable)
    from coremltools.converters.mil.mil.passes.defs.cleanup.const_deduplication import (
        const_deduplication)
    assert const_deduplication().const_threshold == 100   # coremltools' default left alone
    texts = [m.get_spec().ByteSize() for m in (readable, compact)]
    assert texts[1] < 0.75 * texts[0], texts      # names alone: 528 -> 343 KB here

    def consts(m):
        return [op for op in m._mil_program.functions["main"].operations
                if op.op_type == "const"]
    small = [op.outputs[0].val for op in consts(compact)
             if isinstance(op.outputs[0].val, (str, bool))]
    assert small and len(small) == len(set(small))   # every flag and mode string stored once
    numbers = [np.asarray(op.outputs[0].val) for op in consts(compact)
               if not isinstance(op.outputs[0].val, (str, bool))]
    values = [(v.dtype.str, v.shape, v.tobytes()) for v in numbers]
    assert len(values) == len(set(values))        # and every number (strides, pads, axes)
    names = [v.name for op in compact._mil_program.functions["main"].operations
             for v in op.outputs]
    assert len(names) == len(set(names))          # the text refers to variables by name
    assert max(map(len, names)) <= 12 and "hdr" in names
    # parameters keep the prefix the package validation tells them from folded constants by
    assert any(op.outputs[0].name.startswith("p_") for op in consts(compact))


def test_exporter_cli_refuses_bad_input(tmp_path, capsys):
    from dealthdr.export.to_onnx import main

    for bad in ("15,15", "-1", "fast"):
        with pytest.raises(SystemExit) as exc:
            main(["--s-buckets", bad, "--out", str(tmp_path / "x")])
        assert exc.value.code == 2
    (tmp_path / "exists").mkdir()
    assert main(["--s-buckets", "0", "--out", str(tmp_path / "exists")]) == 2
    # a path of another variant is refused; 'default' of a variant that ships none too
    tiny = str(shipped_path("tiny"))
    assert main(["--s-buckets", "0", "--checkpoint", tiny, "--variant", "default", "--out",
                 str(tmp_path / "y")]) == 2
    assert main(["--s-buckets", "0", "--variant", "default", "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert "duplicates" in err and ">= 0" in err and "--force" in err and "not 'default'" in err
    assert "no shipped checkpoint of variant 'default'" in err
    assert not (tmp_path / "y").exists()


@pytest.mark.e2e   # exporter CLI end to end
def test_onnx_exporter_end_to_end_writes_gated_artifacts_and_manifest(tmp_path):
    from dealthdr.export.to_onnx import main

    out = tmp_path / "onnx"
    assert main(["--s-buckets", "0", "--size", "64x64", "--centre", "short",
                 "--calib-clips", "1", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    (art,) = manifest["artifacts"]
    path = out / art["file"]
    assert art["bytes"] == path.stat().st_size and art["sha256"] == digest(path)[1]
    assert art["parity"]["passed"] and art["parity"]["psnr_mu_db"] >= 45
    assert art["bucket_k"] == [0, 0, 0] and art["input_shape"]["frames"] == [1, 5, 3, 64, 64]
    assert manifest["model"]["checkpoint_sha256"] and manifest["calibration"]["buckets"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx"]  # no staging left over


def test_coreml_short_names_keep_inputs_outputs_and_stay_unique():
    pytest.importorskip("coremltools")
    from coremltools.converters.mil import Builder as mb

    from dealthdr.export.coreml_compact import dedupe_small_consts, shorten_names

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 2, 4, 4))])
    def prog(v0):  # an input named like a generated name
        a = mb.conv(x=v0, weight=np.ones((2, 2, 1, 1), np.float32), pad_type="valid")
        b = mb.conv(x=a, weight=np.ones((2, 2, 1, 1), np.float32), pad_type="valid")
        return mb.add(x=a, y=b, name="hdr")

    fn = prog.functions["main"]
    flags = [op for op in fn.operations
             if op.op_type == "const" and isinstance(op.outputs[0].val, str)]
    assert len(flags) == 2 and dedupe_small_consts(fn) == 1
    shorten_names(fn)
    names = [v.name for op in fn.operations for v in op.outputs]
    assert len(names) == len(set(names)) and "v0" not in names   # the input keeps v0 alone
    assert list(fn.inputs) == ["v0"] and fn.outputs[0].name == "hdr"
    conv = [op for op in fn.operations if op.op_type == "conv"]
    assert conv[0].x.name == "v0" and conv[1].pad_type is conv[0].pad_type  # one shared flag
