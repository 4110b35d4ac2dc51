"""Micro-benchmarks of the hot components (pytest-benchmark), kept out of the normal test run.

    .venv/bin/python -m pytest device_bench/bench_components.py -o addopts="" \\
        -p no:cacheprovider --benchmark-json device_bench/results/components_256.json

`pytest -q` does not collect this file: it lives outside `testpaths` (tests/) and its name does
not match `test_*.py`, and pyproject's `--benchmark-skip` would skip it anyway; naming the file
and clearing addopts (`-o addopts=""`, which drops `--benchmark-skip`) runs it. Every benchmark runs the shipped `tiny` checkpoint's
module at the 256x256 deployment tile on the shapes the network feeds it (5-frame window, 4
neighbours, 8 flow pairs), torch eager, `DEALTHDR_BENCH_THREADS` threads (default 1):
  SpyNet        the one flow call per window: 8 (neighbour, direction) pairs at 1/4 resolution
  encoder L1    one encoder's level 1 (embed + blocks) on its 3 (short) frames
  FGMA R=...    decoder level 1 alignment of 4 neighbours, bucket policy with K = R x tiles
  router L1     decoder level 1 frame history router over the current frame + 4 neighbours
"""
import os

import pytest
import torch

from dealthdr.model.fgma import bucket_tiles, tile_grid

SIZE = (256, 256)
RATIOS = (0.0, 0.1, 0.5, 1.0)


@pytest.fixture(scope="module")
def model():
    from dealthdr.checkpoint import load_checkpoint

    torch.set_num_threads(int(os.environ.get("DEALTHDR_BENCH_THREADS", "1")))
    net, _ = load_checkpoint("default")
    return net.eval()


@pytest.fixture(scope="module")
def level1(model):
    """Inputs of decoder level 1 at the deployment tile, from a real forward's shapes."""
    c = model.cfg.dim
    h, w = SIZE
    gen = torch.Generator().manual_seed(0)
    return {"current": torch.randn(1, c, h, w, generator=gen),
            "neighbours": torch.randn(4, c, h, w, generator=gen),
            "flow_tn": torch.randn(4, 2, h, w, generator=gen),
            "flow_nt": torch.randn(4, 2, h, w, generator=gen),
            "image": torch.rand(1, 3, h, w, generator=gen)}


def _inference(benchmark, fn, *args, **kwargs):
    with torch.inference_mode():
        benchmark.pedantic(fn, args=args, kwargs=kwargs, rounds=8, iterations=1,
                           warmup_rounds=2)


@pytest.mark.benchmark(group="spynet")
def test_spynet(benchmark, model):
    h, w = SIZE
    ref, supp = torch.rand(8, 3, h, w), torch.rand(8, 3, h, w)
    benchmark.extra_info.update(pairs=8, working_size=[h // model.cfg.flow_scale,
                                                       w // model.cfg.flow_scale])
    _inference(benchmark, model.spynet.estimate, ref, supp, model.cfg.flow_scale)


@pytest.mark.benchmark(group="encoder")
def test_encoder_level1(benchmark, model):
    enc = model.encoder_short
    x = torch.rand(3, 6, *SIZE)
    benchmark.extra_info.update(frames=3, channels=model.cfg.dim)
    _inference(benchmark, lambda t: enc.levels[0](enc.embed(t)), x)


@pytest.mark.benchmark(group="fgma")
@pytest.mark.parametrize("ratio", RATIOS)
def test_fgma_level1(benchmark, model, level1, ratio):
    fgma = model.fgma[2]
    a, b = tile_grid(*SIZE, fgma.tile)
    k = round(ratio * a * b)
    benchmark.extra_info.update(ratio=ratio, k_tiles_per_neighbour=k, neighbours=4,
                                tiles_run=bucket_tiles(k, a * b))
    # A huge finite s masks every position whose D is not exactly 0 (random flows: all of
    # them), so the bucket attends its K tiles per neighbour. s=inf would take every tile
    # whatever K is: it needs no selection.
    _inference(benchmark, fgma, level1["current"], level1["neighbours"], level1["flow_tn"],
               level1["flow_nt"], level1["image"], 0.0 if k == 0 else 1e9, k)


@pytest.mark.benchmark(group="router")
def test_router_level1(benchmark, model, level1):
    benchmark.extra_info.update(frames=5, channels=model.cfg.dim)
    _inference(benchmark, model.routers[2], level1["current"], level1["neighbours"])
