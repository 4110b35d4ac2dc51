"""Streaming programs (`dealthdr/export/stream.py`): the per-frame methods and the per-window fuse,
run as a frame loop, against the window network they replace."""
import math

import pytest
import torch

from dealthdr.model.inputs import long_pattern_from_exposures
from dealthdr.model.network import bucket_budget
from dealthdr.reconstruct import window_indices
from dealthdr.testclip import make_clip
from dealthdr.export.buckets import Bucket, BucketGraph
from dealthdr.export.stream import StreamRunner, eager_methods, export_stream, signatures
from tests.conftest import untrained_tiny

SIZE = (32, 48)


@pytest.fixture(scope="module")
def model():
    return untrained_tiny(seed=4)


def _buckets(s: float, ratio: float) -> list[Bucket]:
    budget = bucket_budget(ratio, SIZE, 8)
    return [Bucket(s, c, (ratio,) * 3, budget, 8) for c in ("short", "long")]


def _sequence(n: int, exposures=None):
    frames, _, _ = make_clip(*SIZE, frames=n, seed=6)
    if exposures is None:
        exposures = [8.0 if i % 2 else 1.0 for i in range(n)]
    return frames[0], torch.tensor(exposures)


def _loop(model, buckets, frames, exposures):
    runner = StreamRunner(eager_methods(model, buckets))
    by_centre = {b.centre: b for b in buckets}
    worst, n = 0.0, frames.shape[0]
    for t in range(n):
        idx = window_indices(t, n)
        f, e = frames[idx][None], exposures[idx][None]
        centre = "long" if long_pattern_from_exposures(e)[2] else "short"
        with torch.no_grad():
            ref = BucketGraph(model, by_centre[centre])(f, e)
        worst = max(worst, float((runner(idx, f, e, centre) - ref).abs().max()))
    return worst, runner


@pytest.mark.parametrize("s,ratio", [(0.0, 0.0), (2.0, 0.3), (math.inf, 1.0)])
def test_frame_loop_equals_the_window_network(model, s, ratio):
    frames, exposures = _sequence(9)
    worst, runner = _loop(model, _buckets(s, ratio), frames, exposures)
    assert worst <= 1e-5
    # each frame encoded once, each pair (distance 1 and 2, plus the two self-pairs that
    # reflection puts at the ends) through `flow` once for both directions
    assert runner.counts == {"encode": 9, "flow": 17, "fuse": 9}
    assert len(runner.features) <= 5


def test_an_exposure_change_encodes_the_affected_frames_again(model):
    # both exposures 0.5 % longer from frame 5 on (within the 1 % the network reads as one
    # exposure): windows reaching past frame 5 normalise to another shortest exposure
    exposures = [1.0, 8.0, 1.0, 8.0, 1.0, 8.04, 1.005, 8.04, 1.005, 8.04, 1.005]
    frames, exposures = _sequence(11, exposures)
    worst, runner = _loop(model, _buckets(2.0, 0.3), frames, exposures)
    assert worst <= 1e-5
    assert runner.counts["encode"] > 11 and runner.counts["fuse"] == 11


def test_exported_methods_take_and_return_the_documented_shapes(model):
    programs = export_stream(model, _buckets(2.0, 0.3), SIZE)
    sig = signatures(programs)
    assert set(sig) == {"encode_short", "encode_long", "flow", "fuse_short", "fuse_long"}
    h, w = SIZE
    assert sig["encode_short"]["inputs"] == [[1, 3, h, w], [1, 1]]
    assert [o[1:] for o in sig["encode_long"]["outputs"]] == [
        [16, h, w], [32, h // 2, w // 2], [64, h // 4, w // 4], [128, h // 8, w // 8]]
    flow = sig["flow"]["outputs"]
    assert len(flow) == 2 and flow[0] == flow[1] and flow[0][:2] == [1, 2]
    fuse = sig["fuse_short"]["inputs"]
    assert fuse[:2] == [[1, 5, 3, h, w], [1, 5]] and fuse[6] == [4, 16, h, w]
    assert fuse[-2:] == [[4, *flow[0][1:]]] * 2     # the four pairs' flows as `flow` returns
    assert sig["fuse_long"]["outputs"] == [[1, 3, h, w]]
    # the exported graphs compute what the eager methods do
    frames, exposures = _sequence(5)
    f, e = frames[None], exposures[None]
    eager = StreamRunner(eager_methods(model, _buckets(2.0, 0.3)))
    graphs = StreamRunner({k: _call(p.module()) for k, p in programs.items()})
    idx = list(range(5))
    assert torch.allclose(graphs(idx, f, e, "short"), eager(idx, f, e, "short"), atol=1e-5)


def _call(graph):
    def run(inputs):
        with torch.no_grad():
            out = graph(*inputs)
        return list(out) if isinstance(out, (tuple, list)) else [out]
    return run


def test_benchmark_step_runs_the_steady_state_and_returns_the_window_output(model):
    from dealthdr.bench.worker import stream_methods, stream_step

    class Method:  # a loaded ExecuTorch method's calling convention, counting calls
        def __init__(self, run):
            self.run, self.calls = run, 0

        def execute(self, inputs):
            self.calls += 1
            return self.run(inputs)

    buckets = _buckets(2.0, 0.3)
    # Only what the benchmark loads for this centre: a call to any other method is a KeyError.
    assert "fuse_long" not in stream_methods("short")
    methods = {k: Method(v) for k, v in eager_methods(model, buckets).items()
               if k in stream_methods("short")}
    frames, exposures = _sequence(5)
    f, e = frames[None], exposures[None]
    one = methods["encode_short"].run([f[:, 0], e[:, :1]])
    grid = methods["flow"].run([f[:, 0], e[:, :1]] * 2)[0].shape[1:]
    step = stream_step(methods, "short", [x.shape for x in one] +
                       [(4, *x.shape[1:]) for x in one] + [(4, *grid)] * 2)
    with torch.no_grad():
        ref = BucketGraph(model, buckets[0])(f, e)
    # the window fills the buffers, after a warm-up fuse on them
    assert float((step(f, e) - ref).abs().max()) <= 1e-5
    assert methods["encode_short"].calls == 3 and methods["encode_long"].calls == 2
    assert methods["flow"].calls == 4 and methods["fuse_short"].calls == 2
    out = step(f, e)                                          # one steady-state frame
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert methods["encode_short"].calls == 4 and methods["encode_long"].calls == 2
    assert methods["flow"].calls == 6 and methods["fuse_short"].calls == 3


def test_the_benchmark_loop_slides_its_stacked_features_one_frame_in_place():
    from dealthdr.bench.worker import slide

    def feats(frame):     # two levels, each filled with its frame's number
        return [torch.full((1, 2, 4, 4), float(frame)), torch.full((1, 3, 2, 2), float(frame))]

    window = [feats(j) for j in range(5)]
    centre = window[2]
    near = [torch.cat([window[j][lv] for j in (0, 1, 3, 4)]) for lv in range(2)]
    buffers = [t.data_ptr() for t in centre + near]
    slide(centre, near, feats(5))
    for lv in range(2):
        assert centre[lv].unique().tolist() == [3.0]
        assert [float(x[0, 0, 0]) for x in near[lv]] == [1.0, 2.0, 4.0, 5.0]
    assert [t.data_ptr() for t in centre + near] == buffers    # in place: no new memory


def test_a_streamed_frame_counts_one_encode_and_half_of_spynet():
    from dealthdr.bench.run import streamed_flops

    total, comps = streamed_flops({"encoders": 5.0, "flow (SpyNet)": 2.0, "decoder": 3.0}, 5)
    assert comps == {"encoders": 1.0, "flow (SpyNet)": 1.0, "decoder": 3.0} and total == 5.0
    total, comps = streamed_flops({"encoders": 7.0, "flow (SpyNet)": 3.0}, 7)
    assert comps == {"encoders": 1.0, "flow (SpyNet)": 1.0} and total == 2.0
    assert streamed_flops({}, 5) == (None, {})


@pytest.mark.e2e   # Core ML conversion of five functions
def test_coreml_stream_package(model, tmp_path):
    pytest.importorskip("coremltools")
    from dealthdr.export.artifacts import digest
    from dealthdr.export.coreml_stream import NAMES, stream_packages, validate_stream_package

    buckets = _buckets(15.0, 0.2)
    records = stream_packages(tmp_path, model, {"variant": "tiny"}, {"15": buckets}, SIZE, [],
                              precision="fp16", target="iOS18", units="all")
    path = tmp_path / "dealthdr_tiny_s15_stream.mlpackage"
    assert path.is_dir()
    funcs = {r["function"]: r for r in records}
    assert sorted(funcs) == ["encode_long", "encode_short", "flow", "fuse_long", "fuse_short"]
    for name, r in funcs.items():
        assert r["stream"]["input_names"] == NAMES[name.split("_")[0]][0]
        assert r["parity"]["passed"] is None and "macOS" in r["parity"]["pending"]
    assert funcs["encode_short"]["centre"] == "any" and funcs["fuse_long"]["centre"] == "long"
    assert funcs["fuse_short"]["stream"]["inputs"][0] == [1, 5, 3, *SIZE]
    # the two fuse functions store their weights once
    assert digest(path)[0] < sum(r["single_function_bytes"] for r in records) - \
        0.8 * funcs["fuse_long"]["single_function_bytes"]
    sig = signatures(export_stream(model, buckets, SIZE))
    validate_stream_package(path, sig)
    sig["flow"]["inputs"][0] = [1, 3, 64, 64]
    with pytest.raises(ValueError, match="flow: inputs"):
        validate_stream_package(path, sig)


def test_coreml_stream_needs_ios18(tmp_path, capsys):
    from dealthdr.export.to_coreml import main

    assert main(["--s-buckets", "15", "--stream", "--deployment-target", "iOS17",
                 "--out", str(tmp_path / "x")]) == 2
    assert "iOS18" in capsys.readouterr().err and not (tmp_path / "x").exists()


@pytest.mark.slow   # lowers five methods to XNNPACK (~5 min here): kept out of CI
def test_executorch_stream_program_records_and_gates(model, tmp_path):
    from dealthdr.calib.windows import make_windows
    from dealthdr.export.buckets import group_by_s
    from dealthdr.export.to_executorch import stream_programs

    windows = make_windows("heldout", *SIZE, clips=1, seed=1)
    buckets = _buckets(15.0, 0.2)
    records = stream_programs(tmp_path, model, {"variant": "tiny"}, group_by_s(buckets), SIZE,
                              windows)
    assert (tmp_path / "dealthdr_tiny_s15_xnnpack_stream.pte").is_file()
    by_method = {r["method"]: r for r in records}
    assert sorted(by_method) == ["encode_long", "encode_short", "flow", "fuse_long",
                                 "fuse_short"]
    for name, r in by_method.items():
        assert r["stream"]["kind"] == name.split("_")[0]
        assert r["stream"]["per_output_frame"] == {"encode": 1, "flow": 2, "fuse": 1}
        assert r["stream"]["input_memory"] == "caller"
        assert r["parity"]["passed"] and r["planned_activation_bytes"] > 0
        assert r["centre"] == ("any" if r["stream"]["kind"] != "fuse" else name[5:])
    assert by_method["fuse_short"]["stream"]["outputs"] == [[1, 3, *SIZE]]
