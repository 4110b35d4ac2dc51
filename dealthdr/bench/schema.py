"""The latency record every device_bench path writes and reads, and its JSON-lines file.

One record is one (device, runtime, precision, s-bucket, centre, size, threads) measurement:

    device, cpu, os            where it ran (`--device` names the host; ingested records name
                               their phone)
    runtime, runtime_version   torch | onnxruntime | executorch | coreml, and its version
    backend                    eager-cpu | CPUExecutionProvider | xnnpack | a Core ML compute unit
    precision                  fp32 | fp16 | int8
    variant                    the network variant (tiny, s, default) or, for a reference
                               record, the other model's name
    s, bucket_k                FGMA sensitivity ("0", "15", "inf") and K per decoder level
    attention_ratio            share of FGMA tiles the graph attends in: sum K / sum tiles
    size, threads              "HxW"; intra-op threads (null where the runtime has no such knob)
    latency_ms_median/p10/p90  trimmed statistics of the timed inferences (device_bench.stats)
    load_ms                    model load + first-time initialisation, timed apart
    peak_mem_mb                memory the artifact added at its peak (null where not measurable)
    gflops                     FLOPs of one forward of the bucket graph (dealthdr.profile)

Extra fields (centre, sha256, timestamp, samples, ...) are allowed and kept. The optional ones
below are type-checked when present: `psnr_mu` (a reference record's quality) and `reference`
(true for another model measured for comparison).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from dealthdr.fileio import atomic_write_bytes
from dealthdr.model import VARIANTS
from dealthdr.sensitivity import s_text  # noqa: F401  (the schema's canonical s)

STRINGS = ("device", "cpu", "os", "runtime", "runtime_version", "backend", "precision",
           "variant", "size")
FIELDS = ("device", "cpu", "os", "runtime", "runtime_version", "backend", "precision", "variant",
          "s", "bucket_k", "attention_ratio", "size", "threads", "latency_ms_median",
          "latency_ms_p10", "latency_ms_p90", "load_ms", "peak_mem_mb", "gflops")
PRECISIONS = ("fp32", "fp16", "int8")
NULLABLE = ("threads", "peak_mem_mb", "gflops")
OPTIONAL = {"psnr_mu": (int, float), "reference": (bool,), "centre": (str,)}


class RecordError(ValueError):
    """A record that does not follow the schema; the message names the field."""


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate(rec, where: str = "record") -> dict:
    """Check one record; return it with `s` in canonical form. Raises RecordError."""
    def bad(field: str, why: str):
        raise RecordError(f"{where}: field '{field}': {why}, got {rec.get(field)!r}")

    if not isinstance(rec, dict):
        raise RecordError(f"{where}: a record must be a JSON object, got {type(rec).__name__}")
    missing = [f for f in FIELDS if f not in rec]
    if missing:
        raise RecordError(f"{where}: missing field '{missing[0]}'"
                          + (f" (and {len(missing) - 1} more: {missing[1:]})" if missing[1:]
                             else ""))
    for f in STRINGS:
        if not isinstance(rec[f], str) or not rec[f].strip():
            bad(f, "must be a non-empty string")
    if rec["precision"] not in PRECISIONS:
        bad("precision", f"must be one of {list(PRECISIONS)}")
    try:
        h, w = (int(v) for v in rec["size"].lower().split("x"))
        if h < 1 or w < 1:
            raise ValueError
    except ValueError:
        bad("size", "must be 'HxW' with positive integers")
    if isinstance(rec["s"], bool) or not isinstance(rec["s"], (str, int, float)):
        bad("s", "must be a number >= 0 or 'inf'")
    try:
        s = s_text(rec["s"])
    except ValueError:
        bad("s", "must be a number >= 0 or 'inf'")
    k = rec["bucket_k"]
    if not (isinstance(k, list) and len(k) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in k)):
        bad("bucket_k", "must be a list of 3 non-negative integers (K per decoder level)")
    if not _number(rec["attention_ratio"]) or not 0 <= rec["attention_ratio"] <= 1:
        bad("attention_ratio", "must be a number in [0, 1]")
    threads = rec["threads"]
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool)
                                or threads < 1):
        bad("threads", "must be a positive integer or null")
    for f in ("latency_ms_median", "latency_ms_p10", "latency_ms_p90", "load_ms"):
        if not _number(rec[f]):
            bad(f, "must be a finite number")
        if rec[f] < 0 or (rec[f] == 0 and f != "load_ms"):
            bad(f, "must be positive" if f != "load_ms" else "must be >= 0")
    if not rec["latency_ms_p10"] <= rec["latency_ms_median"] <= rec["latency_ms_p90"]:
        bad("latency_ms_median", f"must lie between latency_ms_p10 ({rec['latency_ms_p10']}) "
            f"and latency_ms_p90 ({rec['latency_ms_p90']})")
    for f in ("peak_mem_mb", "gflops"):
        if rec[f] is not None and (not _number(rec[f]) or rec[f] < 0):
            bad(f, "must be a non-negative number or null")
    for f, types in OPTIONAL.items():
        if f in rec and rec[f] is not None and (not isinstance(rec[f], types) or (
                types != (bool,) and isinstance(rec[f], bool))):
            bad(f, f"must be {' or '.join(t.__name__ for t in types)} when present")
    return {**rec, "s": s}


def key(rec: dict) -> tuple:
    """What makes two records the same measurement (resume skips it, ingest replaces it)."""
    return (rec["device"], rec["runtime"], rec["backend"], rec["precision"], rec["variant"],
            s_text(rec["s"]), rec.get("centre"), tuple(rec["bucket_k"]), rec["size"],
            rec["threads"], rec.get("sha256"))


def parse_lines(text: str, source: str) -> list[dict]:
    """Records of a JSON-lines text (or of one JSON array), each validated. Raises RecordError
    naming the line and the field."""
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            items = json.loads(stripped)
        except json.JSONDecodeError as err:
            raise RecordError(f"{source}: not valid JSON ({err})") from None
        return [validate(r, f"{source}[{i}]") for i, r in enumerate(items)]
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise RecordError(f"{source}:{n}: not valid JSON ({err.msg} at column "
                              f"{err.colno})") from None
        out.append(validate(rec, f"{source}:{n}"))
    return out


def read_records(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no records file {path}")
    return parse_lines(path.read_text(), str(path))


def write_records(path: Path, records: list[dict]) -> None:
    """All records, one JSON object a line, replacing `path` atomically (a reader or a kill
    mid-write never sees half a file)."""
    text = "".join(json.dumps(r, sort_keys=False) + "\n" for r in records)
    atomic_write_bytes(Path(path), text.encode())


def is_reference(rec: dict) -> bool:
    """Another model measured for comparison: flagged, or a variant this project does not
    have."""
    return bool(rec.get("reference")) or rec["variant"] not in VARIANTS
