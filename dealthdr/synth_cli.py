"""`dealthdr synth`: synthetic alternating-exposure clips (noisy short, blurry long) with ground
truth HDR and, from panoramas, exact ground-truth flow."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path

from .cliargs import parse_size
from .data.degrade import DegradeConfig
from .data.noise_profile import resolve_profile
from .data.synth import (BUNDLED_HDRI, HELDOUT, SPLITS, SynthConfig, load_panoramas, load_video,
                         synth_dataset, with_motion_scale)

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth", help="synthesise training/test clips from HDR panoramas or an HDR video",
        description=__doc__ + " A camera pans, tilts, rolls and zooms inside real HDR "
        "panoramas (8 CC0 panoramas are bundled) while HDR sprites move in front; each frame "
        "pair integrates --subframes sub-frames (first -> short, the rest -> long), then "
        "unprocessing, Bayer mosaic, Poisson-Gaussian noise (paper Eq. A/B), 10-bit "
        "quantisation and processing give the LDR frames. Deterministic in --seed; resumable.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--hdri-dir", type=Path, default=None,
                     help=f"folder of equirectangular HDR panoramas (.exr/.hdr) "
                          f"(default: the bundled {BUNDLED_HDRI})")
    src.add_argument("--hdr-video", type=Path, default=None, metavar="DIR",
                     help="folder of HDR frames (.exr/.hdr, name order) used directly as "
                          "sub-frames instead of panoramas; no ground-truth flow is written")
    p.add_argument("--out", type=Path, required=True, help="output folder of clip folders")
    p.add_argument("--clips", type=int, default=16, help="number of clips (default: 16)")
    p.add_argument("--frames", type=int, default=10,
                   help="frames per clip, even and >= 6 (default: 10)")
    p.add_argument("--size", type=parse_size, default=(256, 256),
                   help="frame size HxW, even (default: 256x256)")
    p.add_argument("--seed", type=int, default=0, help="base seed; clip i uses (seed, i)")
    p.add_argument("--split", choices=SPLITS, default=None,
                   help=f"bundled panoramas to use: train (all but {', '.join(HELDOUT)}), "
                        "heldout, or all (default: train; an --hdri-dir is used whole)")
    p.add_argument("--subframes", type=int, default=64,
                   help="sub-frames per short+long pair, even; the long exposure averages "
                        "all but the first, and its ground truth is the middle one of those "
                        "(default: 64, as in the paper)")
    p.add_argument("--motion-scale", type=float, default=1.0, metavar="F",
                   help="multiply the camera's and the sprites' speed ranges by F (default 1: "
                        "pans of 0.5-24 px and sprites of 1-24 px per exposure pair); below 1 "
                        "for footage with less motion and shorter long-exposure blur")
    p.add_argument("--start-long", action="store_true",
                   help="start each clip with a long exposure (default: short first)")
    p.add_argument("--noise-profile", default=None, metavar="CAMERA|FILE",
                   help="sample a real sensor's noise instead of the paper's Eq. B day/night "
                        "distributions: a noise-profile JSON (python calib/noise.py, "
                        "calib/darktable.py) or a darktable camera name such as "
                        "'Sony DSC-RX100M7'; each clip draws an ISO log-uniformly over the "
                        "profile's range and its lambdas from the profile's fit (default: Eq. B)")
    p.add_argument("--darktable-profiles", type=Path, default=None, metavar="JSON",
                   help="darktable noiseprofiles.json for --noise-profile CAMERA (default: "
                        "$DEALTHDR_DARKTABLE_NOISEPROFILES, else "
                        "/usr/share/darktable/noiseprofiles.json)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.hdr_video is not None and args.split is not None:
        raise ValueError("--split selects panoramas; it does not apply to --hdr-video")
    if args.darktable_profiles is not None and args.noise_profile is None:
        raise ValueError("--darktable-profiles needs --noise-profile CAMERA")
    if args.hdr_video is not None and args.motion_scale != 1:
        raise ValueError("--motion-scale scales the panorama camera and sprites; an "
                         "--hdr-video brings its own motion")
    profile = None
    if args.noise_profile is not None:
        profile = resolve_profile(args.noise_profile, args.darktable_profiles)
        if profile.fit is None:
            raise ValueError(f"noise profile {profile.camera!r} has no fit across ISOs (it "
                             "needs at least 2 ISOs with positive noise levels)")
        lo, hi = profile.iso_range
        log.info("noise profile %s: ISO %g-%g", profile.camera, lo, hi)
    cfg = with_motion_scale(
        SynthConfig(frames=args.frames, height=args.size[0], width=args.size[1],
                    start_long=args.start_long, degrade=DegradeConfig(subframes=args.subframes)),
        args.motion_scale)
    if args.hdr_video is not None:
        sources = load_video(args.hdr_video, cfg)
    else:
        default = "train" if args.hdri_dir is None else "all"
        sources = load_panoramas(args.hdri_dir or BUNDLED_HDRI, args.split or default, cfg)
    start = time.perf_counter()
    paths = synth_dataset(args.out, args.clips, cfg, sources, args.seed,
                          noise_profile=profile)
    log.info("%d clips in %s (%.1f s); config %s", len(paths), args.out,
             time.perf_counter() - start, dataclasses.asdict(cfg))
    print(f"{len(paths)} clips in {args.out}")
    return 0
