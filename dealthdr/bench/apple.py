"""`python -m device_bench apple`: the exported Core ML packages on Apple hardware, in the same
record format as `run` (then `ingest` the output wherever the curves are drawn).

    # on a Mac: predict timing + compute plan of every function, for each compute-unit setting
    python -m device_bench apple --artifacts exports/coreml --compute-units ALL,CPU_AND_NE
    # a tethered iPhone (developer mode on, paired in Xcode), through coremltools' remote runner
    python -m device_bench apple --artifacts exports/coreml --target iphone --team TEAMID
    # the Xcode route (any OS prints it): compile, list devices, performance report
    python -m device_bench apple --artifacts exports/coreml --print-commands

Mac: each function of the multifunction package is loaded with `ct.models.MLModel(path,
function_name=..., compute_units=...)` (load time = that call, which compiles and specialises
the model) and timed with `predict` like `run` times a runtime. `MLComputePlan` (coremltools >=
8.1) of the compiled model says, per MIL operation, which device Core ML prefers (Neural
Engine, GPU, CPU) and its estimated share of the cost; the record carries the op counts and
cost shares per device (`compute_plan`).

iPhone (coremltools >= 8.3, `coremltools.models.ml_program.experimental`): `Device.
get_connected_devices(DeviceType.IPHONE)`, then `prepare_for_model_debugging(credentials=
AppSigningCredentials(development_team=TEAM))` builds, signs and launches Apple's `modelrunner`
app on the phone (Xcode needed); `MLModelBenchmarker(model, device=device)` times
`benchmark_load` and `benchmark_predict` there and `compute_plan_utils.
load_compute_plan_from_path_on_device` reads the phone's compute plan. Peak memory is not
reported by that route (null). Without it: Xcode > open the .mlpackage > Performance > "+" >
pick the phone and compute units > Run; type the median and load time into a record (schema in
dealthdr/bench/schema.py) and `ingest` it.

On Linux the command refuses (Core ML predicts only on Apple OSes); `--print-commands` works.
"""
from __future__ import annotations

import argparse
import platform
import shlex
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from dealthdr.bench.ingest import merge
from dealthdr.bench.jobs import FlopCache, Job, attention_ratio, manifest_paths, read_manifest
from dealthdr.bench.schema import read_records, validate, write_records
from dealthdr.bench.stats import latency_stats
from dealthdr.bench.worker import make_inputs, peak_memory, start_memory_watch

COMPUTE_UNITS = ("ALL", "CPU_AND_NE", "CPU_AND_GPU", "CPU_ONLY")
DEVICE_KINDS = {"MLNeuralEngineComputeDevice": "neural_engine", "MLGPUComputeDevice": "gpu",
                "MLCPUComputeDevice": "cpu"}


def add_parser(sub) -> None:
    p = sub.add_parser("apple", help="Core ML on a Mac or a tethered iPhone (macOS only)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", type=Path, nargs="+", required=True, metavar="DIR",
                   help="Core ML export folders (export/to_coreml.py, quantize/qat.py) or "
                        "their manifest.json")
    p.add_argument("--compute-units", default="ALL,CPU_AND_NE",
                   help=f"comma-separated, from {list(COMPUTE_UNITS)} (default ALL,CPU_AND_NE)")
    p.add_argument("--functions", default=None,
                   help="functions to run, comma-separated, e.g. s0_short,s15_short "
                        "(default: every function in the manifests)")
    p.add_argument("--target", choices=("mac", "iphone", "ipad"), default="mac",
                   help="this Mac, or a tethered iPhone / iPad via the remote runner "
                        "(default mac)")
    p.add_argument("--team", default="",
                   help="Apple development team ID that signs the modelrunner app (remote)")
    p.add_argument("--device", default=None,
                   help="device name in the records (default: the Mac's model, or the phone's "
                        "name as Xcode lists it)")
    p.add_argument("--warmup", type=int, default=2, help="untimed predictions (default 2)")
    p.add_argument("--repeat", type=int, default=20, help="timed predictions (default 20)")
    p.add_argument("--trim", type=float, default=0.1, help="trimmed share per end (default 0.1)")
    p.add_argument("--out", type=Path, default=Path("runs/apple.jsonl"),
                   help="records file, merged like `ingest` (default runs/apple.jsonl, outside "
                        "the source tree)")
    p.add_argument("--print-commands", action="store_true",
                   help="print the Xcode / devicectl route for the packages and exit (any OS)")
    p.set_defaults(run=run, config=AppleConfig)


def parse_units(text: str) -> list[str]:
    units = [u.strip().upper() for u in text.split(",") if u.strip()]
    bad = [u for u in units if u not in COMPUTE_UNITS]
    if bad or not units:
        raise ValueError(f"--compute-units: {bad or 'nothing given'}; choose from "
                         f"{list(COMPUTE_UNITS)}")
    return units


def coreml_entries(items: list[Path], functions: list[str] | None) -> list[dict]:
    """One entry per Core ML function in the manifests: package path, function, bucket."""
    out = []
    for mpath in manifest_paths(items):
        manifest = read_manifest(mpath)
        for art in manifest["artifacts"]:
            if art["backend"] != "coreml":
                continue
            fn = art.get("function", "main")
            if functions is not None and fn not in functions:
                continue
            out.append({"package": str(mpath.parent / art["file"]), "function": fn,
                        "variant": manifest["model"]["variant"], "precision": art["precision"],
                        "s": art["s"], "centre": art["centre"], "bucket_k": art["bucket_k"],
                        "ratio_budget": art["attention_ratio_budget"],
                        "tile": art.get("tile", 1),
                        "size": tuple(art["input_shape"]["frames"][-2:]),
                        "frames": art["input_shape"]["frames"][1],
                        "sha256": art["sha256"]})
    if not out:
        raise ValueError(f"no Core ML artifacts (backend 'coreml') in {[str(i) for i in items]}"
                         + (f" with functions {functions}" if functions else ""))
    return out


def plan_summary(ops: list[tuple[str, str, float | None]]) -> dict:
    """[(operator, device kind, estimated cost weight)] -> op counts and cost shares per device,
    and the operators that stay off the Neural Engine."""
    counts = Counter(kind for _, kind, _ in ops)
    cost = Counter()
    for _, kind, w in ops:
        cost[kind] += w or 0.0
    total = sum(cost.values())
    off_ne = Counter(op for op, kind, _ in ops if kind != "neural_engine")
    return {"ops": dict(counts), "ops_total": len(ops),
            "cost_share": {k: v / total for k, v in cost.items()} if total else {},
            "off_neural_engine": dict(off_ne.most_common(12))}


def apple_record(host: dict, entry: dict, compute_units: str, samples_ms: list[float],
                 load_ms: float, peak_mem_mb, runtime_version: str, plan: dict | None,
                 trim: float, gflops) -> dict:
    """A schema record (dealthdr/bench/schema.py) for one Core ML function on one device."""
    st = latency_stats(samples_ms, trim)
    size = entry["size"]
    rec = {**host, "runtime": "coreml", "runtime_version": runtime_version,
           "backend": f"coreml-{compute_units}", "precision": entry["precision"],
           "variant": entry["variant"], "s": entry["s"], "bucket_k": list(entry["bucket_k"]),
           "attention_ratio": round(attention_ratio(entry["bucket_k"], size, entry["tile"]), 6),
           "size": f"{size[0]}x{size[1]}", "threads": None,
           "latency_ms_median": round(st["latency_ms_median"], 3),
           "latency_ms_p10": round(st["latency_ms_p10"], 3),
           "latency_ms_p90": round(st["latency_ms_p90"], 3), "load_ms": round(load_ms, 2),
           "peak_mem_mb": peak_mem_mb, "gflops": gflops, "centre": entry["centre"],
           "sha256": entry["sha256"], "artifact": Path(entry["package"]).name,
           "function": entry["function"], "samples_ms": [round(v, 3) for v in samples_ms],
           "compute_plan": plan}
    return validate(rec, f"{entry['function']} {compute_units}")


def xcode_commands(packages: list[str], out_dir: str = "build/coreml") -> list[list[str]]:
    """The command-line half of the Xcode route: list the tethered devices, compile each package
    (what Xcode does before a performance report), open it in Xcode."""
    cmds = [["xcrun", "devicectl", "list", "devices"]]
    for pkg in dict.fromkeys(packages):
        cmds.append(["xcrun", "coremlcompiler", "compile", pkg, out_dir])
        cmds.append(["open", "-a", "Xcode", pkg])
    return cmds


def require_macos(system: str | None = None) -> None:
    system = system or platform.system()
    if system != "Darwin":
        raise ValueError(f"device_bench apple needs macOS: Core ML predicts only on Apple OSes "
                         f"(this is {system}). On a Mac, from the repository root: python -m "
                         "device_bench apple --artifacts exports/coreml; for the Xcode route "
                         "add --print-commands")


def _plan_ops(plan, function: str) -> list[tuple[str, str, float | None]]:
    program = plan.model_structure.program
    if program is None:
        raise ValueError("compute plan: not an ML program")
    fn = program.functions.get(function) or program.functions.get("main")
    ops, stack = [], [fn.block]
    while stack:
        block = stack.pop()
        for op in block.operations:
            stack.extend(op.blocks)
            if op.operator_name == "const":
                continue
            usage = plan.get_compute_device_usage_for_mlprogram_operation(op)
            cost = plan.get_estimated_cost_for_mlprogram_operation(op)
            kind = "unknown" if usage is None else DEVICE_KINDS.get(
                type(usage.preferred_compute_device).__name__, "unknown")
            ops.append((op.operator_name, kind, None if cost is None else cost.weight))
    return ops


def _inputs(entry: dict) -> dict:
    frames, exposures = make_inputs(entry["centre"], entry["size"], frames=entry["frames"])
    return {"frames": frames, "exposures": exposures}


def _mac(entry: dict, units: str, warmup: int, repeat: int) -> tuple:
    import coremltools as ct
    from coremltools.models.compute_plan import MLComputePlan

    inputs = _inputs(entry)
    watch = start_memory_watch()
    t = time.perf_counter()
    model = ct.models.MLModel(entry["package"], function_name=entry["function"],
                              compute_units=getattr(ct.ComputeUnit, units))
    load_ms = (time.perf_counter() - t) * 1e3
    for _ in range(warmup):
        model.predict(inputs)
    samples = []
    for _ in range(repeat):
        t = time.perf_counter_ns()
        model.predict(inputs)
        samples.append((time.perf_counter_ns() - t) / 1e6)
    mem = peak_memory(watch)["peak_mem_mb"]
    plan = MLComputePlan.load_from_path(model.get_compiled_path(),
                                        compute_units=getattr(ct.ComputeUnit, units))
    version = f"coremltools {ct.__version__}, macOS {platform.mac_ver()[0]}"
    return samples, load_ms, round(mem, 1), version, plan_summary(_plan_ops(plan,
                                                                            entry["function"]))


async def _remote(entries, units_list, target: str, team: str, warmup: int, repeat: int):
    import coremltools as ct
    from coremltools.models.ml_program.experimental import compute_plan_utils
    from coremltools.models.ml_program.experimental.perf_utils import MLModelBenchmarker
    from coremltools.models.ml_program.experimental.remote_device import (AppSigningCredentials,
                                                                          Device, DeviceType)

    kind = DeviceType.IPHONE if target == "iphone" else DeviceType.IPAD
    found = Device.get_connected_devices(kind)
    if not found:
        raise ValueError(f"no connected {target} (xcrun devicectl list devices); developer mode "
                         "must be on and the device paired in Xcode")
    device = await found[0].prepare_for_model_debugging(
        credentials=AppSigningCredentials(development_team=team))
    results = []
    for entry in entries:
        for units in units_list:
            cu = getattr(ct.ComputeUnit, units)
            model = ct.models.MLModel(entry["package"], function_name=entry["function"],
                                      compute_units=cu)
            bench = MLModelBenchmarker(model=model, device=device)
            load = await bench.benchmark_load(iterations=1)
            pred = await bench.benchmark_predict(inputs=_inputs(entry), iterations=repeat,
                                                 warmup=warmup > 0)
            plan = await compute_plan_utils.load_compute_plan_from_path_on_device(
                path=model.get_compiled_path(), compute_units=cu, device=device)
            version = f"coremltools {ct.__version__}, {device.name} iOS {device.os_version}"
            results.append((entry, units, pred.samples, load.samples[0], None, version,
                            plan_summary(_plan_ops(plan, entry["function"])), device.name))
    return results


@dataclass(frozen=True)
class AppleConfig:
    """`device_bench apple`'s settings, one field per flag (`--help` explains each)."""
    artifacts: list[Path]
    compute_units: str
    functions: str | None
    target: str
    team: str
    device: str | None
    warmup: int
    repeat: int
    trim: float
    out: Path
    print_commands: bool


def run(cfg: AppleConfig) -> int:
    import asyncio

    functions = [f.strip() for f in cfg.functions.split(",")] if cfg.functions else None
    entries = coreml_entries(cfg.artifacts, functions)
    if cfg.print_commands:
        for cmd in xcode_commands([e["package"] for e in entries]):
            print(shlex.join(cmd))
        print("# then in Xcode: the package's Performance tab > + > the phone, compute units > "
              "Run; write the median / load into a record and `python -m device_bench ingest`")
        return 0
    require_macos()
    units_list = parse_units(cfg.compute_units)
    flops = FlopCache()

    def gflops(e):
        job = Job("coreml", "", e["precision"], e["variant"], e["s"], e["centre"],
                  e["bucket_k"], e["ratio_budget"], e["size"], 1, e["sha256"], e["frames"],
                  tile=e["tile"])
        total = flops(job)[0]
        return None if total is None else round(total, 4)

    if cfg.target == "mac":
        host = {"device": cfg.device or platform.node(), "cpu": platform.processor() or
                platform.machine(), "os": f"macOS {platform.mac_ver()[0]}"}
        results = [(e, u, *_mac(e, u, cfg.warmup, cfg.repeat), None)
                   for e in entries for u in units_list]
    else:
        results = asyncio.run(_remote(entries, units_list, cfg.target, cfg.team, cfg.warmup,
                                      cfg.repeat))
    records = []
    for entry, units, samples, load_ms, mem, version, plan, name in results:
        h = host if cfg.target == "mac" else {"device": cfg.device or name,
                                               "cpu": "Apple SoC", "os": version.split(", ")[1]}
        records.append(apple_record(h, entry, units, samples, load_ms, mem, version, plan,
                                    cfg.trim, gflops(entry)))
        print(f"{entry['function']} {units}: {records[-1]['latency_ms_median']:.1f} ms, "
              f"plan {plan['ops']}")
    existing = read_records(cfg.out) if cfg.out.is_file() else []
    write_records(cfg.out, merge(existing, records)[0])
    print(f"wrote {len(records)} record(s) to {cfg.out}")
    return 0
