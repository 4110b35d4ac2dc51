"""Synthetic alternating-exposure clips with exact ground truth: the data of `dealthdr synth`.

Source radiance is either a set of equirectangular HDR panoramas (a camera moves in them, HDR
sprites move in front, so ground-truth flow is exact) or an HDR video whose frames are used as
sub-frames directly (no flow). Each clip is rendered at `subframes` sub-frames per exposure pair,
integrated into short and long exposures and degraded (dealthdr.data.degrade), then written in
the clip format of dealthdr.data.clip.

Everything random in clip i comes from generators seeded with (seed, i), so clips can be made
in any order, resumed, or made in parallel, and two runs give byte-identical files.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .clip import FORMAT
from .degrade import DegradeConfig, degrade, exposure_scale, sample_camera
from .foreground import SpriteConfig, sample_sprites
from .io import HDR_SUFFIXES, read_hdr, write_exr, write_png16
from .panorama import CameraMotionConfig, pad_panorama, sample_camera_path
from .readers import read_hdr_video
from .scene import PanoramaScene, VideoScene, exposure_schedule, render_exposures

log = logging.getLogger(__name__)

BUNDLED_HDRI = Path(__file__).resolve().parent / "hdri"
# Fixed split of the bundled panoramas: one day-like outdoor scene and the only night scene are
# never used for training, so held-out clips show unseen radiance (and unseen sprite textures).
HELDOUT = ("courtyard", "night")
SPLITS = ("train", "heldout", "all")
# The camera renders at about one panorama pixel per image pixel (zoom >= 1), so a frame side of
# Wp / 2 already spans ~115 degrees; larger frames would need upsampled, blurry ground truth.
MIN_PANO_FACTOR = 2
LDR_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif")
MOTIONS = ("global", "local", "full")


@dataclass(frozen=True)
class SynthConfig:
    """What a clip looks like.

    Args:
        frames: frames per clip; even (whole short + long pairs, as in the paper, Sec. 3.1) and
            >= 6, so that a clip has full 5-frame windows centred on both a short and a long frame.
        height, width: frame size; even (whole 2x2 Bayer tiles).
        start_long: start with a long exposure instead of a short one.
        motion_probs: probabilities of camera motion only, sprite motion only (tripod) and both
            (the three kinds of the paper's real-world set, Sec. 4.2).
        flow_offsets: frame offsets k of the ground-truth flow O_{t->t+k} stored per frame.
    """
    frames: int = 10
    height: int = 256
    width: int = 256
    start_long: bool = False
    motion_probs: tuple[float, float, float] = (0.2, 0.2, 0.6)
    flow_offsets: tuple[int, ...] = (-2, -1, 1, 2)
    degrade: DegradeConfig = field(default_factory=DegradeConfig)
    camera: CameraMotionConfig = field(default_factory=CameraMotionConfig)
    sprites: SpriteConfig = field(default_factory=SpriteConfig)

    def __post_init__(self) -> None:
        if self.frames < 6 or self.frames % 2:
            raise ValueError(f"--frames must be even and >= 6 (whole short+long pairs, and full "
                             f"5-frame windows around both a short and a long frame), got "
                             f"{self.frames}")
        if self.height < 8 or self.width < 8 or self.height % 2 or self.width % 2:
            raise ValueError(f"--size must be even and >= 8x8 (whole 2x2 Bayer tiles), got "
                             f"{self.height}x{self.width}")
        if abs(sum(self.motion_probs) - 1) > 1e-6 or min(self.motion_probs) < 0:
            raise ValueError(f"motion_probs must be probabilities summing to 1: "
                             f"{self.motion_probs}")

    @property
    def subframes_needed(self) -> int:
        """Sub-frames spanned by one clip (its first to its last exposed sub-frame)."""
        s = exposure_schedule(self.frames, self.degrade.subframes, self.start_long)
        return s[-1].start + s[-1].count - s[0].start


@dataclass
class Sources:
    """Loaded, checked radiance: panoramas (name -> padded tensor) or one HDR video."""
    kind: str                                   # "panorama" or "hdr-video"
    names: list[str] = field(default_factory=list)
    panoramas: list[torch.Tensor] = field(default_factory=list)
    video: np.ndarray | None = None
    path: str = ""

    def describe(self) -> dict:
        return {"kind": self.kind, "path": self.path, "names": self.names}


def _check_size(name: str, hp: int, wp: int, cfg: SynthConfig) -> None:
    if abs(wp - 2 * hp) > 1:
        raise ValueError(f"{name} is {wp}x{hp}: not an equirectangular panorama "
                         "(width must be twice the height)")
    need = MIN_PANO_FACTOR * max(cfg.height, cfg.width)
    if wp < need:
        raise ValueError(f"{name} is {wp}x{hp}: too small for {cfg.height}x{cfg.width} frames; "
                         f"panoramas must be at least {MIN_PANO_FACTOR}x as wide as the larger "
                         f"frame side ({need} px), so the camera renders at >= 1 panorama pixel "
                         "per image pixel with a field of view below ~115 degrees")


def load_panoramas(folder: str | Path, split: str, cfg: SynthConfig) -> Sources:
    """Read and check every HDR panorama in `folder`, keep those of `split`.

    Every .exr/.hdr file is read (a corrupt one is an error, not a silent skip); LDR images are
    an error (they carry no radiance); other files (licence, notes) are ignored. The train and
    heldout splits are defined for the bundled panoramas only: another folder is one set
    (`all`), and a user keeps held-out panoramas in a folder of their own.
    """
    folder = Path(folder)
    if split not in SPLITS:
        raise ValueError(f"--split must be one of {SPLITS}, got {split!r}")
    if split != "all" and folder.resolve() != Path(BUNDLED_HDRI).resolve():
        raise ValueError(f"--split {split} names the bundled panoramas' split; {folder} is "
                         "used whole (--split all): keep held-out panoramas in a folder of "
                         "their own")
    if not folder.is_dir():
        raise FileNotFoundError(f"--hdri-dir not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    ldr = [p for p in files if p.suffix.lower() in LDR_SUFFIXES]
    if ldr:
        raise ValueError(f"{ldr[0]} is an LDR image; --hdri-dir must hold linear HDR panoramas "
                         f"({', '.join(HDR_SUFFIXES)})")
    files = [p for p in files if p.suffix.lower() in HDR_SUFFIXES]
    if not files:
        raise ValueError(f"no HDR panoramas ({', '.join(HDR_SUFFIXES)}) in {folder}")
    images = {}
    for p in files:
        img = read_hdr(p)
        _check_size(str(p), img.shape[0], img.shape[1], cfg)
        images[p.stem] = img
    keep = [n for n in images
            if split == "all" or (n in HELDOUT) == (split == "heldout")]
    if not keep:
        raise ValueError(f"no panoramas of split {split!r} in {folder} (held-out names: "
                         f"{', '.join(HELDOUT)}); use --split all")
    return Sources("panorama", keep, [pad_panorama(images[n]) for n in keep], None, str(folder))


def load_video(folder: str | Path, cfg: SynthConfig) -> Sources:
    """An HDR video (folder of frames) long and large enough for one clip."""
    video = read_hdr_video(folder)
    n, h, w = video.shape[:3]
    if h < cfg.height or w < cfg.width:
        raise ValueError(f"HDR video frames are {w}x{h}, smaller than the requested "
                         f"{cfg.width}x{cfg.height}")
    if n < cfg.subframes_needed:
        raise ValueError(f"the HDR video has {n} frames; {cfg.frames} output frames with "
                         f"--subframes {cfg.degrade.subframes} need {cfg.subframes_needed}")
    return Sources("hdr-video", [], [], video, str(folder))


@dataclass
class SynthClip:
    ldr: np.ndarray          # (F, H, W, 3) float32 in [0, 1]
    hdr: np.ndarray          # (F, H, W, 3) float32, short-exposure units
    flow: np.ndarray | None  # (F, K, 2, H, W) float32, NaN outside the clip
    meta: dict


def with_motion_scale(cfg: SynthConfig, factor: float) -> SynthConfig:
    """`cfg` with the camera's and the sprites' speed ranges multiplied by `factor`."""
    if not (factor > 0 and math.isfinite(factor)):
        raise ValueError(f"--motion-scale must be finite and > 0 (a motion scale multiplies "
                         f"speeds), got {factor}")
    if factor == 1:
        return cfg
    scale = lambda r: tuple(v * factor for v in r)  # noqa: E731
    return replace(cfg, camera=replace(cfg.camera, speed_px=scale(cfg.camera.speed_px)),
                   sprites=replace(cfg.sprites, speed_px=scale(cfg.sprites.speed_px)))


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def recipe(cfg: SynthConfig, sources: Sources, seed: int, noise_profile=None) -> dict:
    """Everything that determines a clip besides its index (stored; checked on resume)."""
    out = {"config": asdict(cfg), "source": sources.describe(), "seed": seed}
    if noise_profile is not None:  # absent otherwise: Eq. B datasets keep their exact bytes
        out["noise_profile"] = noise_profile.to_dict()
    return out


def synth_clip(cfg: SynthConfig, sources: Sources, seed: int, index: int,
               noise_profile=None) -> SynthClip:
    """Synthesise clip `index` in memory; noise by Eq. B, or drawn from `noise_profile` (a
    dealthdr.data.noise_profile.NoiseProfile)."""
    # Independent streams for the scene and the sensor: changing one never reshuffles the other.
    rng_scene = np.random.default_rng([seed, index, 0])
    rng_sensor = np.random.default_rng([seed, index, 1])
    h, w, sub = cfg.height, cfg.width, cfg.degrade.subframes
    schedule = exposure_schedule(cfg.frames, sub, cfg.start_long)
    if sources.kind == "panorama":
        k = int(rng_scene.integers(len(sources.names)))
        motion = MOTIONS[int(rng_scene.choice(3, p=cfg.motion_probs))]
        pano = sources.panoramas[k]
        camera = sample_camera_path(rng_scene, cfg.camera, pano.shape[3] - 2,
                                    still=motion == "local")
        lo, hi = cfg.sprites.count
        count = 0 if motion == "global" else int(rng_scene.integers(lo, hi + 1))
        sprites = sample_sprites(rng_scene, cfg.sprites, sources.panoramas, sources.names,
                                 h, w, count)
        scene = PanoramaScene(pano, camera, sprites, h, w, sub)
        yaw, pitch, roll, focal = camera.params(np.array([e.gt for e in schedule]) / sub)
        info = {"panorama": sources.names[k], "motion": motion, "camera": camera.to_dict(),
                "camera_at_gt": np.round(np.stack([yaw, pitch, roll, focal], 1), 6).tolist(),
                "sprites": [s.info for s in sprites]}
    else:
        video = sources.video
        span = cfg.subframes_needed
        first = schedule[0].start
        start = int(rng_scene.integers(video.shape[0] - span + 1))
        y = int(rng_scene.integers(video.shape[1] - h + 1))
        x = int(rng_scene.integers(video.shape[2] - w + 1))
        scene = VideoScene(video, start - first, y, x, h, w)
        info = {"video_start": start, "crop_yx": [y, x]}

    means, gts = render_exposures(scene, schedule, h, w)
    dcfg = cfg.degrade
    cam = sample_camera(rng_sensor, dcfg, noise_profile)
    share = _log_uniform(rng_sensor, *dcfg.saturation_share)
    ratio = dcfg.exposure_ratio
    scale, bound = exposure_scale([m for m, e in zip(means, schedule) if not e.long], cam, share,
                                  ratio, dcfg.long_clip_max)
    ldr = np.stack([degrade(m * scale * (ratio if e.long else 1.0), cam, rng_sensor, dcfg)
                    for m, e in zip(means, schedule)])
    hdr = np.stack([g * scale for g in gts]).astype(np.float32)

    flow = None
    if scene.flow is not None:
        flow = np.full((cfg.frames, len(cfg.flow_offsets), 2, h, w), np.nan, np.float32)
        for t, e in enumerate(schedule):
            for j, off in enumerate(cfg.flow_offsets):
                if 0 <= t + off < cfg.frames:
                    flow[t, j] = scene.flow(e.gt, schedule[t + off].gt)

    exposures = [ratio if e.long else 1.0 for e in schedule]
    meta = {
        "format": FORMAT, "frames": cfg.frames, "height": h, "width": w,
        "exposures": exposures, "long": [e.long for e in schedule], "exposure_ratio": ratio,
        "gt_units": "linear radiance in the short exposure's units: (ldr ** 2.2) / exposure "
                    "matches the ground truth where unclipped, up to noise",
        "gt_subframe": [e.gt for e in schedule],
        "exposure_subframes": [[e.start, e.count] for e in schedule],
        "flow_offsets": list(cfg.flow_offsets) if flow is not None else [],
        "noise": cam.noise_dict(),
        "pipeline": {**cam.pipeline_dict(), "exposure_scale": scale, "saturation_share": share,
                     "exposure_set_by": bound},
        "scene": info, "clip_index": index, "seed": seed, "source": sources.describe(),
        "synth": recipe(cfg, sources, seed, noise_profile),
    }
    return SynthClip(ldr, hdr, flow, meta)


def write_clip(path: Path, clip: SynthClip) -> None:
    """Write a clip folder (the caller renames it into place when complete)."""
    for t in range(len(clip.ldr)):
        write_png16(path / "ldr" / f"{t:06d}.png", clip.ldr[t])
        write_exr(path / "hdr" / f"{t:06d}.exr", clip.hdr[t])
        if clip.flow is not None:
            (path / "flow").mkdir(parents=True, exist_ok=True)
            np.save(path / "flow" / f"{t:06d}.npy", clip.flow[t].astype(np.float16))
    # One top-level key per line, values compact: readable, diffable and deterministic.
    lines = [f" {json.dumps(k)}: {json.dumps(v, sort_keys=True)}" for k, v in
             sorted(clip.meta.items())]
    (path / "meta.json").write_text("{\n" + ",\n".join(lines) + "\n}\n")


def clip_dir(out: Path, index: int) -> Path:
    return out / f"clip_{index:06d}"


def synth_dataset(out: str | Path, clips: int, cfg: SynthConfig, sources: Sources, seed: int,
                  progress: bool = True, noise_profile=None) -> list[Path]:
    """Write clips 0..clips-1 under `out`; complete clips already there are kept (resume)."""
    from tqdm import tqdm

    out = Path(out)
    if clips < 1:
        raise ValueError(f"--clips must be >= 1, got {clips}")
    want = json.loads(json.dumps(recipe(cfg, sources, seed, noise_profile)))
    for i in range(clips):  # refuse to mix clips of other settings before writing anything
        final = clip_dir(out, i)
        if final.exists():
            meta_path = final / "meta.json"
            if not meta_path.is_file():
                raise ValueError(f"{final} exists but is not a finished clip; remove it")
            if json.loads(meta_path.read_text()).get("synth") != want:
                raise ValueError(f"{final} was made with other settings (seed, size, source, "
                                 "config or noise profile); use another --out")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in tqdm(range(clips), desc="synth", unit="clip", disable=not progress or None):
        final = clip_dir(out, i)
        paths.append(final)
        if final.exists():
            log.info("%s exists, skipped", final)
            continue
        tmp = out / f".{final.name}.partial"
        shutil.rmtree(tmp, ignore_errors=True)  # left by an interrupted run
        try:
            write_clip(tmp, synth_clip(cfg, sources, seed, i, noise_profile))
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("wrote %s", final)
    return paths
