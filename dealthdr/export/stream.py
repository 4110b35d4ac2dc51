"""Streaming programs: a phone's frame loop encodes each frame once and computes each flow once.

A window program (`forward_<centre>`) runs both encoders on all five frames and SpyNet on all
eight directed (centre, neighbour) pairs for every output frame, although four of the frames
and half of the pairs were already seen by the window before. A streaming program splits the
network where `dealthdr.stream.FrameStream` splits it, into methods of one program that share
their weights:

- `encode_short(frame, rel)`, `encode_long(frame, rel)`: frame (1, 3, H, W) gamma LDR in
  [0, 1], rel (1, 1) its exposure relative to the shortest of the window it serves (Eq. 1)
  -> its encoder features at levels 1, 2, 3 and the latent, each (1, C, h, w);
- `flow(frame_a, rel_a, frame_b, rel_b)` -> (O_a->b, O_b->a), each (1, 2, H'/f, W'/f) on
  SpyNet's grid: one pair, both directions in one call;
- `fuse_<centre>(frames, exposures, f1, f2, f3, f4, n1, n2, n3, n4, flow_t_n, flow_n_t)` ->
  HDR (1, 3, H, W): the window's frames (1, 5, 3, H, W) and exposures (1, 5) (the merge and
  FGMA's consistency check read them), the centre's features f1-f4, the neighbours' features
  n1-n4 (4, C, h, w) in time order, and the four (centre, neighbour) flows stacked (4, 2, ..).

Per output frame in steady state the loop runs one encode (the newest frame), two `flow` calls
(the newest frame against the two before it) and one `fuse`. A frame's features and flows
depend on its `rel`: with a fixed alternating schedule that is 1 for short frames and the
exposure ratio for long ones in every window, so they are reused; when the shortest exposure
of a window changes (auto-exposure), its frames are encoded again, as `FrameStream` does.
The parity gate runs the methods that way on held-out windows and compares with the eager
window network (`dealthdr/export/gate.py`).
"""
from __future__ import annotations

import torch
from torch import nn

from dealthdr.export.buckets import Bucket, example_inputs
from dealthdr.export.gate import run_gate
from dealthdr.model import DeAltHDR
from dealthdr.model.inputs import relative_exposures, window_pattern

LEVELS = 4  # encoder outputs: levels 1, 2, 3 and the latent


class EncodeGraph(nn.Module):
    def __init__(self, model: DeAltHDR, long: bool) -> None:
        super().__init__()
        self.model, self.long = model, long

    def forward(self, frame: torch.Tensor, rel: torch.Tensor):
        x = self.model.frame_inputs(frame, rel)
        encoder = self.model.encoder_long if self.long else self.model.encoder_short
        return tuple(encoder(x))


class FlowGraph(nn.Module):
    def __init__(self, model: DeAltHDR) -> None:
        super().__init__()
        self.model = model

    def forward(self, frame_a, rel_a, frame_b, rel_b):
        guide = self.model.frame_inputs(torch.cat((frame_a, frame_b)),
                                        torch.cat((rel_a, rel_b)))[:, 3:].clamp(0, 1)
        a, b = guide[:1], guide[1:]
        flow = self.model.spynet.estimate(torch.cat((a, b)), torch.cat((b, a)),
                                          self.model.cfg.flow_scale)
        return flow[:1], flow[1:]


class FuseGraph(nn.Module):
    def __init__(self, model: DeAltHDR, bucket: Bucket) -> None:
        super().__init__()
        self.model, self.bucket = model, bucket

    def forward(self, frames, exposures, f1, f2, f3, f4, n1, n2, n3, n4, flow_t_n, flow_n_t):
        h, w = frames.shape[-2:]
        x = self.model._padded_inputs(frames, exposures)
        feats = [(f1, n1), (f2, n2), (f3, n3), (f4, n4)]
        out, _ = self.model.fuse(x, relative_exposures(exposures), feats, (flow_t_n, flow_n_t),
                                 self.bucket.s, self.bucket.budget)
        if out.shape[-2:] != (h, w):  # a no-op slice would export as `alias`
            out = out[..., :h, :w]
        return out


def stream_inputs(model: DeAltHDR, bucket: Bucket, size: tuple[int, int]) -> dict:
    """Example inputs per method (shapes are what the program is fixed to)."""
    frames, exposures = example_inputs(bucket, size, model.cfg.num_frames)
    with torch.no_grad():
        feats = [model.encoder_short(model.frame_inputs(frames[:, i], exposures[:, i:i + 1]))
                 for i in range(frames.shape[1])]
    t = frames.shape[1]
    centre = t // 2
    near = [i for i in range(t) if i != centre]
    one, rel = frames[:, 0], exposures[:, :1]
    with torch.no_grad():  # SpyNet's working grid (it rounds to its pyramid's multiple)
        grid = FlowGraph(model)(one, rel, one, rel)[0].shape[-2:]
    flows = torch.zeros(len(near), 2, *grid)
    # distinct tensors: torch.export reads one tensor passed twice as one aliased input
    fuse = (frames, exposures, *feats[centre],
            *[torch.cat([feats[i][lv] for i in near]) for lv in range(LEVELS)], flows,
            flows.clone())
    return {"encode": (one, rel), "flow": (one, rel, frames[:, 1], exposures[:, 1:2]),
            "fuse": fuse}


def export_stream(model: DeAltHDR, buckets: list[Bucket], size: tuple[int, int]) -> dict:
    """{method: ExportedProgram} for the buckets of one s (one fuse method per centre)."""
    model = model.eval()
    ex = stream_inputs(model, buckets[0], size)
    with torch.no_grad():
        out = {f"encode_{kind}": torch.export.export(EncodeGraph(model, kind == "long").eval(),
                                                     ex["encode"], strict=False)
               for kind in ("short", "long")}
        out["flow"] = torch.export.export(FlowGraph(model).eval(), ex["flow"], strict=False)
        for b in buckets:
            out[f"fuse_{b.centre}"] = torch.export.export(
                FuseGraph(model, b).eval(), stream_inputs(model, b, size)["fuse"], strict=False)
    return out


def method_kind(method: str) -> str:
    """"encode", "flow" or "fuse"."""
    return method.split("_")[0]


def recorded_methods(bucket: Bucket, group: list[Bucket]) -> list[tuple[str, dict]]:
    """(method, record extras) for the manifest records of one bucket of an s: its fuse, and
    with the first bucket the per-frame methods both centres share (centre "any")."""
    shared = ["encode_short", "encode_long", "flow"] if bucket is group[0] else []
    return [(f"fuse_{bucket.centre}", {})] + [(m, {"centre": "any"}) for m in shared]


def stream_record(method: str, programs: dict, sig: dict, **extra) -> dict:
    """The manifest's `stream` entry of one method: what it is, how often a frame loop calls
    it, the shapes (and names, where the backend names them) it takes and returns, and
    anything else the backend records (`input_memory`)."""
    return {"kind": method_kind(method), "methods": sorted(programs),
            "per_output_frame": {"encode": 1, "flow": 2, "fuse": 1}, **extra, **sig[method]}


def signatures(programs: dict) -> dict:
    """{method: {"inputs": [shape...], "outputs": [shape...]}} for the manifest."""
    out = {}
    for name, ep in programs.items():
        specs = ep.graph_signature
        nodes = {n.name: n for n in ep.graph.nodes}
        ins = [list(nodes[s.arg.name].meta["val"].shape) for s in specs.input_specs
               if s.kind.name == "USER_INPUT"]
        outs = [list(nodes[s.arg.name].meta["val"].shape) for s in specs.output_specs]
        out[name] = {"inputs": ins, "outputs": outs}
    return out


class StreamRunner:
    """A window through a streaming program's methods, as a phone's frame loop runs it.

    `methods` maps names to callables taking and returning lists of tensors (loaded ExecuTorch
    methods, or eager graphs for tests). Features and flows are cached by (frame index,
    relative exposure) like `FrameStream`, so consecutive windows reuse them; `counts` says how
    many encodes and flow calls ran."""

    def __init__(self, methods: dict) -> None:
        self.methods = methods
        self.features: dict = {}
        self.flows: dict = {}
        self.counts = {"encode": 0, "flow": 0, "fuse": 0}

    def __call__(self, indices: list[int], frames: torch.Tensor, exposures: torch.Tensor,
                 centre: str) -> torch.Tensor:
        rel = relative_exposures(exposures)
        keys = [(i, round(float(r), 6)) for i, r in zip(indices, rel[0].tolist())]
        live = set(keys)
        self.features = {k: v for k, v in self.features.items() if k in live}
        self.flows = {p: v for p, v in self.flows.items() if p[0] in live and p[1] in live}
        longs = window_pattern(centre, len(keys))
        for j, k in enumerate(keys):
            if k not in self.features:
                kind = "long" if longs[j] else "short"
                self.features[k] = list(self.methods[f"encode_{kind}"](
                    [frames[:, j].contiguous(), rel[:, j:j + 1].contiguous()]))
                self.counts["encode"] += 1
        c = len(keys) // 2
        near = [j for j in range(len(keys)) if j != c]
        for j in near:
            pair = (keys[c], keys[j]) if keys[c][0] < keys[j][0] else (keys[j], keys[c])
            if pair not in self.flows:
                a, b = (c, j) if pair[0] == keys[c] else (j, c)
                self.flows[pair] = list(self.methods["flow"](
                    [frames[:, a].contiguous(), rel[:, a:a + 1].contiguous(),
                     frames[:, b].contiguous(), rel[:, b:b + 1].contiguous()]))
                self.counts["flow"] += 1
        t_n, n_t = [], []
        for j in near:
            forward, backward = self.flows[(keys[c], keys[j]) if keys[c][0] < keys[j][0]
                                           else (keys[j], keys[c])]
            if keys[c][0] < keys[j][0]:
                t_n.append(forward), n_t.append(backward)
            else:
                t_n.append(backward), n_t.append(forward)
        feats = self.features[keys[c]]
        stacks = [torch.cat([self.features[keys[j]][lv] for j in near]) for lv in range(LEVELS)]
        self.counts["fuse"] += 1
        return self.methods[f"fuse_{centre}"]([frames, exposures, *feats, *stacks,
                                               torch.cat(t_n), torch.cat(n_t)])[0]


def eager_methods(model: DeAltHDR, buckets: list[Bucket]) -> dict:
    """The streaming methods as eager graphs with the loaded methods' calling convention."""
    graphs = {"encode_short": EncodeGraph(model, False), "encode_long": EncodeGraph(model, True),
              "flow": FlowGraph(model)}
    graphs.update({f"fuse_{b.centre}": FuseGraph(model, b) for b in buckets})

    def call(graph):
        def run(inputs):
            with torch.no_grad():
                out = graph.eval()(*inputs)
            return list(out) if isinstance(out, tuple) else [out]
        return run
    return {name: call(g) for name, g in graphs.items()}


def program_methods(path) -> dict:
    """Every method of a streaming .pte, loaded, with `eager_methods`' calling convention."""
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(str(path))
    loaded = {name: program.load_method(name) for name in program.method_names}
    return {name: (lambda m: lambda inputs: list(m.execute(inputs)))(m)
            for name, m in loaded.items()}


def gate_stream(methods: dict, model: DeAltHDR, bucket: Bucket, windows,
                precision: str = "fp32",
                ran_on: str = "executorch runtime (XNNPACK + portable kernels), streaming "
                              "methods") -> dict:
    """The parity gate of one centre's fuse: each held-out window through a fresh loop (five
    encodes, four flows, the fuse) against the eager window network."""
    def run(frames, exposures):
        return StreamRunner(methods)(list(range(frames.shape[1])), frames, exposures,
                                     bucket.centre)
    return run_gate(run, model, bucket, windows, precision, ran_on)
