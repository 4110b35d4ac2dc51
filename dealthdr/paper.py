"""The paper's published numbers that the plots draw beside ours, for shape only.

Zhang et al., DeAltHDR, App. E, Table I "Performance comparison
between DeAltHDR configurations and HDRFlow": PSNR (mu-law, their synthetic test set), FLOPs (G)
and time (ms) of the default model at 16 values of s, 256x256 on an RTX A6000 (App. E, Table G
caption). Fig. 1 draws the same points. Their FLOPs are most likely MACs (see the project
README). Table G: the per-component runtime / FLOPs breakdown at s = 15.
"""
from __future__ import annotations

SOURCE = "paper Table I (DeAltHDR default, RTX A6000, 256x256)"

# s, PSNR, SSIM, LPIPS, FLOPs (G), time (ms); "inf" is the attention-only row.
TABLE_I = [
    ("0", 32.42, 0.9629, 0.201, 98, 94),
    ("0.14", 32.43, 0.9630, 0.201, 101, 100),
    ("0.29", 32.46, 0.9633, 0.198, 104, 108),
    ("0.43", 32.48, 0.9635, 0.196, 107, 119),
    ("0.57", 32.49, 0.9637, 0.196, 111, 128),
    ("0.71", 32.49, 0.9640, 0.196, 115, 134),
    ("0.86", 32.52, 0.9640, 0.194, 119, 138),
    ("1", 32.53, 0.9642, 0.192, 123, 149),
    ("15", 32.55, 0.9644, 0.192, 128, 152),
    ("30", 32.57, 0.9647, 0.190, 132, 162),
    ("43", 32.59, 0.9649, 0.188, 137, 165),
    ("57", 32.60, 0.9651, 0.188, 142, 172),
    ("71", 32.60, 0.9653, 0.185, 147, 186),
    ("85", 32.62, 0.9657, 0.184, 152, 190),
    ("100", 32.63, 0.9658, 0.182, 159, 198),
    ("inf", 32.65, 0.9660, 0.180, 168, 224),
]
HDRFLOW = {"psnr": 32.26, "gflops": 116, "ms": 128}  # Table I, first row

# Table G (s = 15): component -> (time ms, share of time, FLOPs G). Sub-rows of the paper are
# kept as they are; "flow (SpyNet)" and the mask/attention split are parts of FGMA there.
TABLE_G = {
    "input processing": (8, 0.053, 2.1),
    "encoders": (42, 0.276, 38.4),
    "FGMA (incl. flow)": (58, 0.382, 52.8),
    "flow (SpyNet)": (18, 0.118, 8.4),
    "FGMA mask": (4, 0.026, 2.2),
    "FGMA attention": (36, 0.237, 42.2),
    "router": (28, 0.184, 24.5),
    "decoder": (12, 0.079, 9.8),
    "output processing": (4, 0.026, 0.4),
    "total": (152, 1.0, 128),
}


def normalised_curve(column: str) -> tuple[list[float], list[float], list[str]]:
    """(cost / cost at s=0, PSNR - PSNR at s=0, s labels) for column "gflops" or "ms"."""
    idx = {"gflops": 4, "ms": 5}[column]
    base_cost, base_q = TABLE_I[0][idx], TABLE_I[0][1]
    return ([row[idx] / base_cost for row in TABLE_I], [row[1] - base_q for row in TABLE_I],
            [row[0] for row in TABLE_I])
