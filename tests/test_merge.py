"""The exposure-aware merge the `tiny` head refines (model/merge.py)."""
import numpy as np
import torch

from dealthdr.model import create_model
from dealthdr.model.inputs import prepare_inputs, relative_exposures
from dealthdr.model.merge import ExposureMerge
from dealthdr.model.spynet import resize_flow

EXP = torch.tensor([[1.0, 8.0, 1.0, 8.0, 1.0]])


def _scene(h=32, w=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, h // 4, w // 4, generator=g)
    return torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear") * 0.6 + 0.01


def _capture(scene, exposures=EXP, noise=0.0, seed=0):
    """LDR frames (1, T, 3, H, W) of a static linear scene (short units), clipped and gamma'd."""
    g = torch.Generator().manual_seed(seed)
    frames = []
    for e in exposures[0]:
        raw = scene * e
        raw = raw + noise * torch.randn(raw.shape, generator=g) * raw.clamp_min(1e-3).sqrt()
        frames.append(raw.clamp(0, 1) ** (1 / 2.2))
    return torch.stack(frames, dim=1)


def _merge(frames, exposures=EXP, flow=None):
    x = prepare_inputs(frames, exposures)
    b, t, _, h, w = x.shape
    if flow is None:
        flow = torch.zeros(b * (t - 1), 2, h, w)
    return ExposureMerge()(x[:, :, :3], relative_exposures(exposures), flow, t // 2)


def test_clean_static_window_merges_to_the_scene_even_where_long_frames_clip():
    scene = _scene()
    scene[..., :8, :] *= 1.5  # up to 0.9: below the short white, far above the long (1/8)
    frames = _capture(scene)
    assert (frames[:, 1] >= 1.0).any()
    out = _merge(frames)
    np.testing.assert_allclose(out.numpy(), scene.numpy(), rtol=2e-4, atol=1e-6)


def test_merge_removes_most_of_the_short_centre_frame_noise():
    scene = _scene() * 0.1  # shadows: where a long frame is worth many short ones
    frames = _capture(scene, noise=0.02, seed=3)
    x = prepare_inputs(frames, EXP)
    centre_err = (x[:, 2, :3] - scene).pow(2).mean()
    merged_err = (_merge(frames) - scene).pow(2).mean()
    assert merged_err < 0.2 * centre_err


def test_flow_aligns_a_moving_neighbourhood_and_consistency_rejects_a_wrong_flow():
    scene = _scene(32, 48, seed=1)
    shifts = (-4, -2, 2, 4)  # frame i shows the scene moved right by 2 * (i - 2) px
    frames = []
    for i, e in enumerate(EXP[0]):
        k = (i - 2) * 2
        moved = torch.roll(scene, shifts=k, dims=-1)
        frames.append((moved * e).clamp(0, 1) ** (1 / 2.2))
    frames = torch.stack(frames, dim=1)
    # O_{t->n}: the centre pixel p is seen at p + k in neighbour n.
    flow = torch.zeros(4, 2, 32, 48)
    for j, k in enumerate(shifts):
        flow[j, 0] = k
    good = _merge(frames, flow=flow)
    wrong = _merge(frames)
    lin = prepare_inputs(frames, EXP)[:, :, :3]
    assert (good - scene).abs().max() < 1e-4
    # Zero flow: the neighbours disagree with the centre, so they are rejected, not blended.
    naive = lin.mean(dim=1)
    assert (wrong - lin[:, 2]).abs().mean() < 0.1 * (naive - lin[:, 2]).abs().mean()


def test_untrained_merge_head_outputs_the_fixed_merge():
    torch.manual_seed(0)
    model = create_model("tiny").eval()
    assert model.cfg.merge_base and model.head.out_channels == 3 + model.cfg.num_frames
    frames = _capture(_scene(), noise=0.01, seed=2)
    with torch.no_grad():
        out = model(frames, EXP, s=0)
        x = prepare_inputs(frames, EXP)
        flow_t_n, _ = model._flows(x[:, :, 3:].clamp(0, 1), 2)
        ref = model.merge(x[:, :, :3], relative_exposures(EXP),
                          resize_flow(flow_t_n, x.shape[-2:]), 2)
    torch.testing.assert_close(out, ref.relu())


def test_learned_log_weights_pick_frames():
    scene = _scene()
    frames = _capture(scene, noise=0.05, seed=4)
    x = prepare_inputs(frames, EXP)
    flow = torch.zeros(4, 2, *x.shape[-2:])
    delta = torch.full((1, 5, *x.shape[-2:]), -1e3)
    delta[:, 2] = 1e3  # trust only the centre
    out = ExposureMerge()(x[:, :, :3], relative_exposures(EXP), flow, 2, delta)
    torch.testing.assert_close(out, x[:, 2, :3], rtol=1e-3, atol=1e-5)


def test_config_consistency_scale_reaches_the_merge_and_keeps_a_noisy_centres_neighbours():
    """A strict scale reads a noisy short centre's own noise (read noise, correlated over 2x2
    pixels as demosaicing leaves it) as misalignment and drops its aligned neighbours; the
    configured scale is the one the network's merge uses."""
    import pytest

    from dealthdr.model import get_config
    from dealthdr.model.config import DeAltHDRConfig

    scene = _scene() * 0.1
    g = torch.Generator().manual_seed(4)
    frames = []
    for e in EXP[0]:
        noise = torch.randn(1, 3, scene.shape[-2] // 2, scene.shape[-1] // 2, generator=g)
        noise = torch.nn.functional.interpolate(noise, scale_factor=2, mode="nearest")
        frames.append((scene * e + 0.02 * noise).clamp(0, 1) ** (1 / 2.2))
    x = prepare_inputs(torch.stack(frames, dim=1), EXP)
    flow = torch.zeros(4, 2, *x.shape[-2:])
    rel = relative_exposures(EXP)
    err = {c: (ExposureMerge(consistency=c)(x[:, :, :3], rel, flow, 2) - scene).pow(2).mean()
           for c in (0.04, 0.16)}
    assert err[0.16] < 0.3 * err[0.04]
    loose = {**get_config("tiny").__dict__, "merge_consistency": 0.16}
    assert create_model(DeAltHDRConfig.from_dict(loose)).merge.consistency == 0.16
    assert create_model("tiny").merge.consistency == 0.04  # what the shipped weights expect
    with pytest.raises(ValueError, match="merge_consistency"):
        DeAltHDRConfig.from_dict({**loose, "merge_consistency": 0.0})


def test_fetched_pixels_replace_the_flow_warp_where_m_is_set():
    """Pixels fetched through attention stand in for the flow-warped ones at M: the same
    pixels give the plain merge (zero flow: the warp is exact), and other pixels change the
    output only around M."""
    frames = _capture(_scene(), noise=0.02, seed=5)
    x = prepare_inputs(frames, EXP)
    lin, rel = x[:, :, :3], relative_exposures(EXP)
    h, w = x.shape[-2:]
    flow = torch.zeros(4, 2, h, w)
    merge = ExposureMerge()
    warped = merge.align(lin, rel, flow, 2)
    m = torch.zeros(4, 1, h, w)
    m[:, :, :, : w // 2] = 1.0
    plain = merge(lin, rel, flow, 2)
    same = merge(lin, rel, flow, 2, warped=warped, fetched=(warped[:, :3] * m, m))
    torch.testing.assert_close(same, plain)
    dark = merge(lin, rel, flow, 2, warped=warped, fetched=(warped[:, :3] * m * 0.5, m))
    changed = (dark - plain).abs().amax(dim=(0, 1, 2))
    assert changed[: w // 2 - 8].min() > 0          # inside M, away from its edge
    assert changed[w // 2 + 8:].max() == 0          # beyond the consistency blur's reach


def test_merge_attention_lets_the_image_loss_reach_level_1_attention():
    """With `merge_attention` the merge takes pixels through FGMA's level-1 attention, so an
    untrained network (zero head: the output is the merge) already depends on that level's
    query projection at s > 0, and not at s = 0, where it is the plain network."""
    import dataclasses

    import pytest

    from dealthdr.model import get_config

    with pytest.raises(ValueError, match="merge_base"):
        dataclasses.replace(get_config("default"), merge_attention=True)
    torch.manual_seed(0)
    model = create_model(dataclasses.replace(get_config("tiny"), merge_attention=True)).eval()
    plain = create_model("tiny").eval()
    plain.load_state_dict(model.state_dict())
    frames = _capture(_scene(), noise=0.05, seed=6)
    with torch.no_grad():
        torch.testing.assert_close(model(frames, EXP, s=0), plain(frames, EXP, s=0),
                                   rtol=0, atol=0)
    for s, reaches in ((0.0, False), (float("inf"), True), (15.0, True)):
        model.zero_grad()
        model(frames, EXP, s=s).sum().backward()
        grad = model.fgma[2].proj_q.weight.grad
        assert (grad is not None and grad.abs().max() > 0) == reaches, s
