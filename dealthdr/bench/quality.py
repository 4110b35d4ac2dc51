"""PSNR-mu per (variant, precision, runtime, s, centre), read from the project's evaluation
outputs; each source names its variant, so curves of several variants never mix figures.

Sources, in order of precedence:
  quantize_report.json (dealthdr.quantize.report): per backend and s-bucket graph, PSNR-mu vs
      ground truth on held-out windows at the deployment size: the `fp32` column for every fp32
      runtime (each exported fp32 artifact matches its torch graph to >= 45 dB, so they share
      it), `qat` (else `ptq`) for that backend's int8 artifact.
  `dealthdr evaluate --json` output (e.g. dealthdr/weights/eval_heldout.json): the dynamic
      model at each evaluated s on held-out clips; fp32, both centres, used for buckets the
      report does not cover.
A bucket no source covers has no quality; plots and `pick` say so rather than invent one.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from dealthdr.bench.schema import s_text

log = logging.getLogger(__name__)

# Record runtime/backend -> the quantize report's backend section.
REPORT_BACKEND = {("executorch", "xnnpack"): "xnnpack", ("onnxruntime", "CPUExecutionProvider"):
                  "onnx", ("coreml", None): "coreml"}


class Quality:
    def __init__(self) -> None:
        # (variant, prec, backend|None, s, centre)
        self.bucket: dict[tuple, tuple[float, str]] = {}
        # evaluation rows (the fp32 dynamic model; baselines under variant and s None):
        # (variant, method, s) -> (record, source)
        self.rows: dict[tuple, tuple[dict, str]] = {}

    def load(self, path: Path) -> "Quality":
        doc = json.loads(Path(path).read_text())
        fmt = doc.get("format", "")
        if fmt.startswith("dealthdr-quantize-report"):
            v = _variant(doc.get("model", {}).get("variant"), path)
            for backend, sec in doc.get("backends", {}).items():
                for name, b in sec.get("buckets", {}).items():
                    s, centre = s_text(b["s"]), b["centre"]
                    src = f"{Path(path).name} ({backend}, {name})"
                    self.bucket.setdefault((v, "fp32", None, s, centre), (b["fp32"], src))
                    q = b["qat"] if b.get("qat") is not None else b.get("ptq")
                    if q is not None:
                        kind = "QAT" if b.get("qat") is not None else "PTQ"
                        self.bucket[(v, "int8", backend, s, centre)] = (q, f"{src} {kind}")
        elif fmt.startswith("dealthdr-eval"):
            src = f"{Path(path).name} (dynamic)"
            for r in doc["records"]:
                if r.get("s") is None:  # a baseline: one row per evaluation, whatever variant
                    self.rows.setdefault((None, r.get("method"), None), (r, src))
                elif r.get("method") == "dealthdr" and r.get("psnr_mu") is not None:
                    v = _variant(r.get("variant", doc.get("variant")), path)
                    self.rows.setdefault((v, "dealthdr", s_text(r["s"])), (r, src))
        else:
            raise ValueError(f"{path}: not a quantize report or an evaluation JSON "
                             f"(format {fmt!r})")
        return self

    def of(self, rec: dict) -> tuple[float, str] | tuple[None, None]:
        """(PSNR-mu, source) of a record's graph, or (None, None)."""
        if rec.get("psnr_mu") is not None:
            return rec["psnr_mu"], "record"
        v, s, centre, prec = rec.get("variant"), rec["s"], rec.get("centre"), rec["precision"]
        if prec == "int8":
            backend = REPORT_BACKEND.get((rec["runtime"], rec["backend"]),
                                         REPORT_BACKEND.get((rec["runtime"], None)))
            return self.bucket.get((v, "int8", backend, s, centre), (None, None))
        if prec == "fp16":  # Core ML fp16: parity pending off macOS; no figure of its own
            return None, None
        hit = self.bucket.get((v, "fp32", None, s, centre))
        if hit:
            return hit
        row = self.rows.get((v, "dealthdr", s))
        return (row[0]["psnr_mu"], row[1]) if row else (None, None)

    def row(self, variant: str | None, method: str, s: str | None) -> dict:
        """An evaluation row (a baseline: variant and s None), or {} when no source has it."""
        hit = self.rows.get((variant, method, s))
        return hit[0] if hit else {}


def _variant(name: str | None, path: Path) -> str:
    if not name:
        raise ValueError(f"{path}: names no variant; quality figures are matched per variant")
    return name


def load_quality(paths) -> Quality:
    q = Quality()
    for p in paths or []:
        q.load(p)
    return q
