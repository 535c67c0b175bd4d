"""Output differences carried through a network layer by layer (occlusion's passes): the
same as two whole passes, in float32 to rounding and in bfloat16 to within the change's
own scale; networks it cannot carry are refused, not approximated."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18

from inference.engine.attribution import CropClassifier
from inference.engine.differences import OutputDifferences


class Mixed(nn.Module):
    """Every kind of node the differences meet: a shared constant, a subtraction, a
    functional ReLU, a leaky ReLU and a max-pool (carried through), averages, a reshape."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.shift = nn.Parameter(torch.randn(1, 8, 1, 1))
        self.norm = nn.BatchNorm2d(8).eval()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * 4 * 4, 3)

    def forward(self, x):
        y = self.norm(self.conv(x)) - self.shift
        y = F.leaky_relu(self.pool(F.relu(y)) + 0.5, 0.1)
        y = F.avg_pool2d(y, 2)
        return self.fc(y.reshape(-1, 8 * 4 * 4))


def changes(shape, n=6, seed=0):
    """Window-like changes: a small patch of each copy moved."""
    generator = torch.Generator().manual_seed(seed)
    d = torch.zeros(n, *shape[1:])
    for i in range(n):
        top, left = (int(v) for v in torch.randint(0, shape[-1] - 4, (2,), generator=generator))
        d[i, :, top : top + 4, left : left + 4] = torch.randn(shape[1], 4, 4, generator=generator)
    return d


@pytest.mark.parametrize("name", ["mixed", "resnet18", "shipped"])
def test_float32_differences_equal_two_whole_passes(name, shipped_models):
    from inference.registry import load_version

    torch.manual_seed(0)
    if name == "shipped":  # the folded, channels-last copy occlusion uses
        classifier = load_version(shipped_models["phase_classifier"])
        spec = classifier.spec
        network = CropClassifier(classifier.module, spec.network_px, spec.mean, spec.std).module
        x = torch.randn(1, 3, spec.network_px, spec.network_px)
    else:
        network = (Mixed() if name == "mixed" else resnet18(num_classes=5)).eval()
        x = torch.randn(1, 3, 16 if name == "mixed" else 64, 16 if name == "mixed" else 64)
    d = changes(x.shape)
    with torch.no_grad():
        moved = OutputDifferences.around(network, x)
        expected = network(x + d) - network(x)
        got = moved(d)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-4 * float(expected.abs().max()))


def test_bfloat16_differences_round_within_the_changes_scale():
    """Two bfloat16 passes lose a small change among the activations' rounding; carried as
    a difference, it keeps its digits."""
    torch.manual_seed(1)
    network = resnet18(num_classes=5).eval()
    x = torch.randn(1, 3, 64, 64)
    d = changes(x.shape) * 0.01
    with torch.no_grad():
        expected = network(x + d) - network(x)
        carried = OutputDifferences.around(network, x, torch.bfloat16)(d)
        reduced = network.to(torch.bfloat16)
        whole = (reduced((x + d).bfloat16()) - reduced(x.bfloat16())).float()
    scale = float(expected.abs().max())
    assert float((carried - expected).abs().max()) < 0.02 * scale
    assert float((whole - expected).abs().max()) > 0.1 * scale  # what it avoids


class Normalised(nn.Module):
    """Buffers and a plain tensor attribute as constants, a constant that broadcasts a
    smaller difference, and an in-place method."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.rand(1, 3, 1, 1))
        self.register_buffer("std", torch.rand(1, 3, 1, 1) + 0.5)
        self.position = torch.randn(1, 3, 4, 4)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 2)

    def forward(self, x):
        y = F.adaptive_avg_pool2d((x - self.mean) / self.std, 1) + self.position
        y = y.mul_(2.0)
        return self.fc(torch.flatten(self.conv(y), 1))


def test_constants_of_every_kind_are_carried_exactly():
    torch.manual_seed(2)
    network = Normalised().eval()
    x = torch.randn(1, 3, 8, 8)
    d = changes(x.shape)
    with torch.no_grad():
        moved = OutputDifferences.around(network, x)
        expected = network(x + d) - network(x)
        for _ in range(2):  # nothing of x's pass changes from call to call
            assert torch.allclose(moved(d), expected, atol=1e-5)


class ReadsItsSize(nn.Module):
    def forward(self, x):
        return x.view(x.size(0), -1).sum(1, keepdim=True)


class Branches(nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x


class TwoOutputs(nn.Module):
    def forward(self, x):
        return x.mean((2, 3)), x.amax((2, 3))


class Masks(nn.Module):
    def forward(self, x):
        return (x * (x > 0)).mean((2, 3))


class TwoInputs(nn.Module):
    def forward(self, x, shift: float = 0.0):
        return (x + shift).mean((2, 3))


class Aliased(nn.Module):
    """Reads a tensor after an in-place ReLU changed it: a graph of values would not.
    Its values are positive at x, so only some changes would show it."""

    def __init__(self):
        super().__init__()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        y = x + 10.0
        z = self.relu(y)
        return (y + z).mean((2, 3))


class AliasedThroughAView(Aliased):
    def __init__(self):
        super().__init__()
        self.same = nn.Identity()

    def forward(self, x):
        y = x + 10.0
        z = self.relu(self.same(y).view(-1, 3, 8, 8))
        return (y + z).mean((2, 3))


class ConstantOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.ones(1, 2))

    def forward(self, x):
        return self.bias * 1.0


def hooked():
    network = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Flatten())
    network[0].register_forward_hook(lambda module, inputs, output: output * 2)
    return network


REFUSED = {
    "reads its size": ReadsItsSize().eval(),
    "branches": Branches().eval(),
    "two outputs": TwoOutputs().eval(),
    "masks": Masks().eval(),
    "two inputs": TwoInputs().eval(),
    "aliased": Aliased().eval(),
    "aliased through a view": AliasedThroughAView().eval(),
    "constant output": ConstantOutput().eval(),
    "hooked": hooked().eval(),
    "training": nn.Sequential(nn.Conv2d(3, 3, 1), nn.Dropout(0.5)).train(),
}


@pytest.mark.parametrize("name", REFUSED)
def test_networks_it_cannot_carry_are_refused(name):
    assert OutputDifferences.around(REFUSED[name], torch.rand(1, 3, 8, 8)) is None


def test_a_network_whose_layer_was_replaced_is_traced_again():
    network = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Flatten(), nn.Linear(3 * 8 * 8, 2)).eval()
    x, d = torch.randn(1, 3, 8, 8), changes((1, 3, 8, 8))
    assert OutputDifferences.around(network, x) is not None
    network[2] = nn.Linear(3 * 8 * 8, 5)
    with torch.no_grad():
        expected = network(x + d) - network(x)
        assert torch.allclose(OutputDifferences.around(network, x)(d), expected, atol=1e-5)
