"""What `run` measures: artifacts read from dealthdr.export / quantize manifests, plus torch eager.

A manifest (`dealthdr/export/artifacts.py`) lists per artifact its backend, precision, s, centre,
bucket K, attention-ratio budget, input shape and sha256. Every artifact that runs on this host
becomes one job per thread count; ExecuTorch programs hold one method per centre, so a .pte
appears once per method. Core ML packages are left to `device_bench apple` (macOS).

A streaming program (`export/to_executorch.py --stream`) is one job per centre, backend
`xnnpack-stream`: its steady state per output frame (one encode, two flows, the fuse; see
`worker.py`), next to the window program of the same bucket.

Torch eager is the reference every runtime is compared with: the same bucket graph (same s, K,
exposure pattern) run by `BucketGraph` at every requested size, K recomputed from the bucket's
ratio budget where the size differs from the export's.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dealthdr.checkpoint import read_config, resolve_checkpoint
from dealthdr.export.buckets import Bucket, example_inputs, make_buckets
from dealthdr.fileio import sha256_file
from dealthdr.model import VARIANTS, create_model, get_config
from dealthdr.model.network import level_tiles
from dealthdr.profile import count_flops

log = logging.getLogger(__name__)

APPLE_BACKENDS = ("coreml", "executorch-coreml")
RUNTIMES = ("torch", "onnxruntime", "executorch")


@dataclass
class Job:
    runtime: str                 # torch | onnxruntime | executorch
    backend: str                 # eager-cpu | CPUExecutionProvider | xnnpack
    precision: str
    variant: str
    s: str
    centre: str
    bucket_k: list[int]
    ratio_budget: list[float]
    size: tuple[int, int]
    threads: int
    sha256: str                  # the artifact's, or the checkpoint's for eager
    frames: int                  # window length: the artifact's input shape, or the eager
                                 # checkpoint's num_frames
    path: str | None = None
    method: str | None = None
    checkpoint: str | None = None
    manifest: str | None = None
    extra: dict = field(default_factory=dict)
    tile: int = 1                # FGMA tile side K counts in; 1 (positions) where a manifest
                                 # gives none

    @property
    def size_text(self) -> str:
        return f"{self.size[0]}x{self.size[1]}"

    @property
    def label(self) -> str:
        name = Path(self.path).name if self.path else "eager"
        return f"{self.runtime}/{self.precision} s={self.s} {self.centre} {self.size_text} " \
               f"t{self.threads} {name}{':' + self.method if self.method else ''}"

    def to_json(self, warmup: int, repeat: int) -> dict:
        d = asdict(self)
        d.update(warmup=warmup, repeat=repeat, size=list(self.size))
        return d


def attention_ratio(bucket_k, size: tuple[int, int], tile: int) -> float:
    """Share of decoder positions the bucket graph computes attention for: sum K / sum tiles
    of `tile` x `tile` positions (levels 1-3, per neighbour; the same K holds for every
    neighbour)."""
    return sum(bucket_k) / sum(level_tiles(size, tile))


def read_manifest(path: Path) -> dict:
    """An export manifest, refused with its path when it is not one."""
    try:
        doc = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a manifest (JSON) file: {err}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("artifacts"), list) \
            or not isinstance(doc.get("model"), dict):
        raise ValueError(f"{path} is not an export manifest (no 'model' and 'artifacts')")
    return doc


def manifest_paths(items: list[Path]) -> list[Path]:
    out = []
    for item in items:
        item = Path(item)
        path = item / "manifest.json" if item.is_dir() else item
        if not path.is_file():
            raise FileNotFoundError(f"no manifest.json in {item} (an export or quantize output "
                                    "folder, or a manifest file)")
        out.append(path)
    return out


def _checkpoint(manifest: dict, override: str | None, variant: str) -> str | None:
    """A local checkpoint with the manifest's sha256: its recorded path, else the shipped one
    of the manifest's variant."""
    if override:
        return str(resolve_checkpoint(override, variant))
    want = manifest.get("model", {}).get("checkpoint_sha256")
    candidates = [manifest.get("model", {}).get("checkpoint"), "default"]
    for c in candidates:
        try:
            path = resolve_checkpoint(c, variant) if c else None
        except (FileNotFoundError, ValueError):
            continue
        if path is not None and path.is_file() and sha256_file(path) == want:
            return str(path)
    return None


def _runtime_of(backend: str) -> tuple[str, str] | None:
    if backend == "executorch-xnnpack":
        return "executorch", "xnnpack"
    if backend == "onnx":
        return "onnxruntime", "CPUExecutionProvider"
    return None


def discover(items: list[Path], sizes: list[tuple[int, int]], threads: list[int],
             runtimes: tuple[str, ...] = RUNTIMES, s_filter: list[str] | None = None,
             centres: tuple[str, ...] = ("short", "long"), checkpoint: str | None = None,
             verify: bool = True) -> list[Job]:
    """Jobs for every artifact of the manifests (and eager for every bucket) that matches."""
    artifact_jobs, eager_buckets = [], {}
    for mpath in manifest_paths(items):
        manifest = read_manifest(mpath)
        variant = manifest["model"]["variant"]
        ckpt = _checkpoint(manifest, checkpoint, variant)
        for art in manifest["artifacts"]:
            if s_filter is not None and art["s"] not in s_filter or art["centre"] not in centres:
                continue
            size = tuple(art["input_shape"]["frames"][-2:])
            key = (variant, art["s"], art["centre"], tuple(art["attention_ratio_budget"]))
            if ckpt is None and "torch" in runtimes and key not in eager_buckets:
                log.warning("%s: no local checkpoint with sha256 %s; no eager reference for its "
                            "buckets (pass --checkpoint)", mpath,
                            manifest["model"].get("checkpoint_sha256"))
            elif ckpt is not None:
                eager_buckets.setdefault(key, ckpt)
            rt = _runtime_of(art["backend"])
            if rt is None:
                if art["backend"] in APPLE_BACKENDS:
                    log.info("skipping %s (%s): Core ML runs on Apple OSes; use "
                             "`python -m device_bench apple`", art["file"], art["backend"])
                continue
            if "tiled" in art:
                log.info("skipping %s:%s: a tiled program; use `python -m device_bench tiled`",
                         art["file"], art.get("method"))
                continue
            if "stream" in art:
                if art["stream"]["kind"] != "fuse":
                    continue  # timed inside the fuse job: one output frame's steady state
                rt = (rt[0], "xnnpack-stream")
            if rt[0] not in runtimes or size not in sizes:
                continue
            path = mpath.parent / art["file"]
            if not path.is_file():
                raise FileNotFoundError(f"{path}, listed in {mpath}, is missing (a manifest "
                                        "copied without its artifacts?)")
            if verify and sha256_file(path) != art["sha256"]:
                raise ValueError(f"{path}: sha256 differs from its manifest {mpath}; "
                                 "re-export or point at the matching folder")
            extra = {k: art[k] for k in ("quantization", "planned_activation_bytes", "stream")
                     if k in art}
            for t in threads:
                artifact_jobs.append(Job(
                    rt[0], rt[1], art["precision"], variant, art["s"], art["centre"],
                    list(art["bucket_k"]), list(art["attention_ratio_budget"]), size, t,
                    art["sha256"], art["input_shape"]["frames"][1], path=str(path),
                    method=art.get("method"), manifest=str(mpath), extra=extra,
                    tile=art.get("tile", 1)))
    eager_jobs = []
    if "torch" in runtimes:
        digests = {c: sha256_file(c) for c in set(eager_buckets.values())}
        for (variant, s, centre, ratio), ckpt in eager_buckets.items():
            cal = {"buckets": [{"s": s, "ratio": list(ratio)}]}
            cfg = read_config(ckpt)[0]  # what the worker's eager model is built from
            for size in sizes:
                b = make_buckets(cal, [float(s)], size, (centre,), cfg.attn_tile)[0]
                for t in threads:
                    eager_jobs.append(Job("torch", "eager-cpu", "fp32", variant, s, centre,
                                          list(b.budget), list(ratio), size, t, digests[ckpt],
                                          cfg.num_frames, checkpoint=ckpt, tile=b.tile))
    jobs = eager_jobs + artifact_jobs
    order = {r: i for i, r in enumerate(RUNTIMES)}
    jobs.sort(key=lambda j: (j.size, j.threads, float(j.s), j.centre, order[j.runtime],
                             j.precision))
    return jobs


class FlopCache:
    """GFLOPs (and per-component GFLOPs) of a bucket graph, computed once per
    (variant, s, centre, K, size, window length). FLOPs of a fixed-K graph depend on its shapes,
    not on its weights or its input, so a freshly built model of the variant is counted."""

    def __init__(self) -> None:
        self._models, self._done = {}, {}

    def __call__(self, job: Job) -> tuple[float, dict]:
        k = (job.variant, job.s, job.centre, tuple(job.bucket_k), job.size, job.frames)
        if k not in self._done:
            import dataclasses

            import torch

            if job.variant not in VARIANTS:
                return None, {}
            if (job.variant, job.frames) not in self._models:
                cfg = dataclasses.replace(get_config(job.variant), num_frames=job.frames)
                self._models[job.variant, job.frames] = create_model(cfg).eval()
            model = self._models[job.variant, job.frames]
            b = Bucket(float(job.s), job.centre, tuple(job.ratio_budget), tuple(job.bucket_k),
                       job.tile)
            frames, exposures = example_inputs(b, job.size, model.cfg.num_frames)
            with torch.no_grad():
                total, comps, _ = count_flops(model, frames, exposures, b.s,
                                              None if b.s == 0 else b.budget)
            self._done[k] = (total / 1e9, {c: v / 1e9 for c, v in comps.items()})
        return self._done[k]
