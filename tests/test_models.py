"""Backbones keep a spatial map on small images and match torchvision's parameter names."""

import pytest
import torch
import torchvision

from jigclu.models import JigCluModel, ResNetBackbone


@pytest.mark.parametrize("arch,size,expect", [("resnet18_small", 32, 4), ("resnet18", 224, 7),
                                               ("resnet18", 32, 1), ("resnet50_small", 32, 4)])
def test_feature_map_size(arch, size, expect):
    net = ResNetBackbone(arch, width=8).eval()
    fmap = net.forward_features(torch.randn(2, 3, size, size))
    assert fmap.shape[-1] == expect
    assert fmap.shape[1] == net.feature_dim


@pytest.mark.parametrize("arch,ctor", [("resnet18", torchvision.models.resnet18),
                                       ("resnet50", torchvision.models.resnet50)])
def test_state_dict_loads_into_torchvision(arch, ctor):
    ours = ResNetBackbone(arch).eval()
    tv = ctor(weights=None).eval()
    missing, unexpected = tv.load_state_dict(ours.state_dict(), strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected
    x = torch.randn(1, 3, 64, 64)
    tv.fc = torch.nn.Identity()
    torch.testing.assert_close(tv(x), ours(x))


@pytest.mark.parametrize("m", [2, 3, 4])
def test_jigclu_model_outputs_per_patch(m):
    model = JigCluModel("resnet18_small", width=8, grid=m, proj_dim=16)
    z, loc = model(torch.randn(3, 3, 8 * m, 8 * m))
    assert z.shape == (3 * m * m, 16) and loc.shape == (3 * m * m, m * m)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(3 * m * m))


def test_width_option():
    assert ResNetBackbone("resnet18_small", width=16).feature_dim == 128
    assert ResNetBackbone("resnet50", width=64).feature_dim == 2048
    with pytest.raises(ValueError):
        ResNetBackbone("vgg", width=8)
