"""Flag types and set-up shared by every command line of the project (the `dealthdr`
subcommands and the tools' scripts); imports nothing of the project, so any CLI can use it."""
from __future__ import annotations

import argparse
import dataclasses
import logging


def parse_size(text: str) -> tuple[int, int]:
    """'256x256' -> (256, 256) as (height, width)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HxW, e.g. 256x256, got {text!r}") from None
    if h < 8 or w < 8:
        raise argparse.ArgumentTypeError(f"size {text} is below the 8x8 minimum")
    return h, w


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """'256x256,1080x1920' -> [(256, 256), (1080, 1920)]."""
    return [parse_size(t) for t in text.split(",") if t.strip()]


def config_from(cls, namespace: argparse.Namespace, skip: tuple[str, ...] = (),
                tuples: bool = False):
    """The typed config `cls` (a dataclass, one field per flag) from parsed flags, so that
    library code takes configs, never an argparse.Namespace. The parser's own entries (`skip`)
    aside, the flags and the fields must be the same names: a flag without a field, or a field
    without a flag, is a TypeError naming them (caught by the tests, not at a user's run).
    `tuples`: list values become tuples (for configs that are hashed or compared)."""
    names = {f.name for f in dataclasses.fields(cls)}
    given = set(vars(namespace)) - set(skip)
    if names != given:
        raise TypeError(f"{cls.__name__}: flags without a field {sorted(given - names)}, "
                        f"fields without a flag {sorted(names - given)}")
    values = {n: getattr(namespace, n) for n in names}
    if tuples:
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**values)


def apply_threads(threads: int | None) -> None:
    """--threads of a subcommand: torch intra-op threads, None leaves torch's default."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError("--threads must be >= 1")
    import torch

    torch.set_num_threads(threads)


def check_device(device: str) -> None:
    """--device: a torch device this machine has, refused with a clear error otherwise (torch
    would raise deep in the first call that uses it, or assert for a missing CUDA build)."""
    import torch

    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as err:
        raise ValueError(f"--device {device} is not usable here: {err}") from None


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 2 ** 20   # the largest glibc accepts on 64-bit


def reuse_freed_memory() -> bool:
    """Let glibc keep freed heap memory for the next allocation of the same size instead of
    handing it back to the OS, for commands that run the network over many windows.

    By default glibc maps each allocation over its (adaptive) threshold with mmap and unmaps
    it on free, so every window's activations arrive as fresh pages and pay one page fault
    per 4 KiB, and it trims the heap top after every large free. With the mmap threshold at
    its maximum and no trimming, a window reuses the previous one's pages. Measured with
    `dealthdr reconstruct` on a 32-frame 256x256 clip at s=15, one thread, three interleaved
    rounds (same as the environment variables MALLOC_MMAP_THRESHOLD_=33554432
    MALLOC_TRIM_THRESHOLD_=4294967296): streaming 18.0-18.8 -> 14.2-14.8 s, every window
    22.4-26.7 -> 20.4-20.9 s. Peak RSS is unchanged (the high-water mark is the same; freed
    memory just stays mapped until exit). A no-op returning False off glibc (macOS, musl),
    whose allocators behave differently."""
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    ok = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
    ok &= libc.mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1)
    global _kept
    _kept = _kept or bool(ok)
    return bool(ok)


FREED_MEMORY_KEPT = "glibc, freed memory kept (M_MMAP_THRESHOLD 32 MiB, no trim)"
_kept = False


def allocator_note() -> str:
    """This process's allocator settings, as benchmark records name them."""
    return FREED_MEMORY_KEPT if _kept else "system defaults"


OUR_PACKAGES = ("dealthdr",)


def configure_logging(verbose: bool = True) -> None:
    """INFO for this project's loggers, WARNING for everything else: the ONNX exporter and
    onnxscript alone log thousands of INFO lines per graph."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in OUR_PACKAGES:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
