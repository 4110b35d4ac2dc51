import pytest
import torch

from dealthdr.model.spynet import SpyNet, convert_basicsr_state_dict, load_basicsr_spynet


def _basicsr_state(width=1.0, levels=6):
    ref = SpyNet(levels, width)
    state = {}
    for key, value in ref.state_dict().items():
        _, i, j, name = key.split(".")
        state[f"basic_module.{i}.basic_module.{j}.{name}"] = torch.randn_like(value)
    state["mean"] = torch.zeros(1, 3, 1, 1)
    state["std"] = torch.ones(1, 3, 1, 1)
    return state


def test_loads_basicsr_state_dict_from_pth(tmp_path):
    state = _basicsr_state()
    path = tmp_path / "spynet_sintel_final.pth"
    torch.save({"params": state}, path)
    net = SpyNet()
    load_basicsr_spynet(net, path)
    assert torch.equal(net.levels[3][4].weight, state["basic_module.3.basic_module.4.weight"])
    assert torch.equal(net.levels[0][8].bias, state["basic_module.0.basic_module.8.bias"])


def test_loads_safetensors_and_rejects_other_layouts(tmp_path):
    from safetensors.torch import save_file
    state = {k: v for k, v in _basicsr_state().items() if k not in ("mean", "std")}
    save_file(state, tmp_path / "w.safetensors")
    load_basicsr_spynet(SpyNet(), tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="does not fit"):
        load_basicsr_spynet(SpyNet(width=0.5), tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="not a BasicSR"):
        convert_basicsr_state_dict({"conv.weight": torch.zeros(1)})
    with pytest.raises(FileNotFoundError):
        load_basicsr_spynet(SpyNet(), tmp_path / "missing.pth")


def test_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    path = tmp_path / "evil.pth"
    torch.save({"params": Evil()}, path)
    with pytest.raises(Exception):
        load_basicsr_spynet(SpyNet(), path)


def test_estimate_any_size_returns_working_resolution_flow():
    net = SpyNet(levels=4, width=0.25)
    a, b = torch.rand(3, 3, 50, 70), torch.rand(3, 3, 50, 70)
    flow = net.estimate(a, b, scale=2)
    assert flow.shape[0] == 3 and flow.shape[1] == 2
    assert flow.shape[-2] % net.multiple == 0 and flow.shape[-1] % net.multiple == 0
    with pytest.raises(ValueError, match="multiple"):
        net(a, b)
