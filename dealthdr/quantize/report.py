"""quantize_report.json and quantize_report.md: fp32 / PTQ / QAT per backend and s-bucket."""
from __future__ import annotations

import json
from pathlib import Path

from dealthdr import __version__
from dealthdr.fileio import atomic_write_bytes, jsonable
from dealthdr.quantize.config import QuantizeConfig
from dealthdr.sysinfo import machine_record


def markdown(report: dict) -> str:
    lines = [f"# int8 quality and cost ({report['size'][0]}x{report['size'][1]}, "
             f"PSNR-mu vs ground truth on held-out synthetic windows)", "",
             "| backend | bucket | fp32 dB | PTQ dB | QAT dB | PTQ gap | QAT gap |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for backend, sec in report["backends"].items():
        for name, r in sec["buckets"].items():
            qat = "n/a" if r["qat"] is None else f"{r['qat']:.2f}"
            qat_gap = "n/a" if r["qat_gap_db"] is None else f"{r['qat_gap_db']:+.2f}"
            lines.append(f"| {backend} | {name} | {r['fp32']:.2f} | {r['ptq']:.2f} | "
                         f"{qat} | {r['ptq_gap_db']:+.2f} | {qat_gap} |")
    lat = report["backends"].get("xnnpack", {}).get("latency")
    if lat:
        lines += ["", f"Host latency, {lat['bucket']}, {lat['threads']} threads (median ms): "
                  f"eager fp32 {lat['eager_fp32']['median_ms']:.0f}, XNNPACK fp32 "
                  f"{lat['xnnpack_fp32']['median_ms']:.0f}, XNNPACK int8 "
                  f"{lat['xnnpack_int8']['median_ms']:.0f} (int8 vs fp32 .pte "
                  f"{lat['int8_vs_fp32_pte_speedup']:.2f}x, vs eager "
                  f"{lat['int8_vs_eager_speedup']:.2f}x); .pte bytes fp32 "
                  f"{lat['bytes']['xnnpack_fp32_pte']}, int8 {lat['bytes']['xnnpack_int8_pte']}"]
    onnx = report["backends"].get("onnx", {}).get("latency")
    if onnx:
        lines += ["", f"onnxruntime, {onnx['bucket']} (median ms): fp32 "
                  f"{onnx['fp32']['median_ms']:.0f}, int8 QDQ {onnx['int8']['median_ms']:.0f}"]
    sens = report.get("sensitivity")
    if sens:
        lines += ["", f"Per-block sensitivity ({sens['bucket']}, only this group int8, PTQ "
                  f"{sens['observer']}; PSNR-mu vs fp32 output):", "",
                  "| group | dB vs fp32 |", "|---|---:|"]
        for g, r in sens["groups"].items():
            v = "NaN/Inf output" if r["non_finite"] else f"{r['psnr_mu_vs_fp32']:.1f}"
            lines.append(f"| {g} | {v} |")
    lines += ["", "Kept float: sampling coordinates, indices and mask statistics always; "
              "groups " + "; ".join(f"{c} centre: {', '.join(g)}" for c, g in
                                    report["float_groups"].items()) + ".", ""]
    return "\n".join(lines)


def write_report(stage: Path, report: dict, info: dict, cfg: QuantizeConfig) -> dict:
    doc = {"format": "dealthdr-quantize-report/1", "dealthdr": __version__, "model": info,
           **report, "machine": machine_record()}
    atomic_write_bytes(stage / "quantize_report.json",
                       (json.dumps(jsonable(doc), indent=2) + "\n").encode())
    atomic_write_bytes(stage / "quantize_report.md", markdown(doc).encode())
    return doc
