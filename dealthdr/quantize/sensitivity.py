"""Per-block quantization sensitivity: quantize one block group, keep the rest float.

For each group of `dealthdr/quantize/policy.py` (encoders, SpyNet, routers, middle, FGMA, decoder,
head, merge, io) a post-training int8 model with only that group quantized is compared with the
float model on held-out windows (PSNR-mu, peak 1). A group whose int8 costs far more than the
others, or breaks the output (NaN/Inf), is what `--float-groups` should keep float.
"""
from __future__ import annotations

import logging

import torch

from dealthdr.quantize.measure import agreement
from dealthdr.quantize.policy import FloatPolicy, group_names
from dealthdr.quantize.quantizers import check_attention_kept, make_quantizer
from dealthdr.quantize.ranges import share_ranges

log = logging.getLogger(__name__)


def ptq(program, backend: str, policy_kw: dict, calibration: list, observer: str,
        centre: str):
    """Post-training int8 of one exported bucket program; returns the converted module."""
    return ptq_artifact({"g": program}, {"g": centre}, backend, {"g": policy_kw}, calibration,
                        observer)["g"]


def ptq_artifact(programs: dict, centres: dict[str, str], backend: str,
                 policy_kw: dict[str, dict], calibration: list, observer: str,
                 share: bool = False) -> dict:
    """Post-training int8 of the exported programs of one artifact ({name: program}), each
    calibrated on the windows of its centre exposure; with `share`, the activations the
    graphs have in common get one range, the union of theirs (`share_ranges`, as QAT's do).
    Returns {name: converted module}."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    prepared = {}
    for name, program in programs.items():
        gm = program.module()
        prepared[name] = prepare_pt2e(gm, make_quantizer(
            backend, FloatPolicy(gm, **policy_kw[name]), observer=observer))
        with torch.no_grad():
            for w in calibration:
                if w.centre == centres[name]:
                    prepared[name](w.frames, w.exposures)
    if share:
        share_ranges(prepared, dict.fromkeys(prepared, "artifact"))
    out = {}
    for name, gm in prepared.items():
        out[name] = convert_pt2e(gm)
        check_attention_kept(out[name])
    return out


def block_sensitivity(program, reference, backend: str, calibration: list, windows: list,
                      centre: str, observer: str = "minmax") -> dict:
    """{group: {"psnr_mu_vs_fp32": dB or None, "non_finite": bool}} for one bucket graph."""
    out = {}
    for group in group_names():
        model = ptq(program, backend, {"only_groups": (group,)}, calibration, observer, centre)
        try:
            figure = agreement(model, reference, windows, centre)
            out[group] = {"psnr_mu_vs_fp32": round(figure["psnr_mu_db"], 2),
                          "non_finite": False}
        except ValueError as err:  # psnr_mu refuses NaN/Inf
            out[group] = {"psnr_mu_vs_fp32": None, "non_finite": True, "error": str(err)}
        log.info("sensitivity %s: %s", group, out[group])
    return out
