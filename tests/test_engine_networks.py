"""Networks, losses and model loading by format."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torchvision.models import resnet50

from inference.engine.model_io import (
    DETECTOR_DEFAULTS,
    ModelSpec,
    load_classifier,
    load_detector,
    save_native,
)
from inference.engine.networks import CenterNet, build_classifier
from inference.engine.vocabulary import PHASES
from inference.tools.centernet import centernet_loss, centernet_targets

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit deprecation notes


def test_centernet_is_compact_and_stride_4() -> None:
    net = CenterNet().eval()
    assert sum(p.numel() for p in net.parameters()) < 2_000_000
    with torch.inference_mode():
        assert net(torch.rand(2, 3, 320, 320)).shape == (2, 2 + 4, 80, 80)


def test_centernet_loss_decreases_in_a_few_steps() -> None:
    torch.manual_seed(0)  # a few steps of Adam are not monotone on every draw
    net = CenterNet()
    images = torch.rand(2, 3, 128, 128)
    boxes = [torch.tensor([[30.0, 40.0, 70.0, 76.0]]), torch.zeros(0, 4)]
    labels = [torch.tensor([1]), torch.zeros(0, dtype=torch.int64)]
    targets = centernet_targets(boxes, labels, num_classes=2, input_size=(128, 128))
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = centernet_loss(net(images), targets)
        optimiser.zero_grad()
        loss["total"].backward()
        optimiser.step()
        losses.append(loss["total"].item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    assert set(loss) == {"heatmap", "size", "offset", "total"}


def _detector_spec() -> dict:
    return {**DETECTOR_DEFAULTS, "mean": [0.5] * 3, "std": [0.25] * 3}


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        torch.allclose(x.boxes, y.boxes, atol=1e-4)
        and torch.allclose(x.scores, y.scores, atol=1e-5)
        and torch.equal(x.labels, y.labels)
        for x, y in zip(a, b, strict=True)
    )


def test_native_and_torchscript_detectors_round_trip(tmp_path: Path) -> None:
    net = CenterNet().eval()
    spec = ModelSpec.from_dict(_detector_spec())
    save_native(net, spec, tmp_path / "det.pt")
    torch.jit.script(net).save(str(tmp_path / "det.ts"))
    native = load_detector(tmp_path / "det.pt")
    scripted = load_detector(tmp_path / "det.ts", "torchscript", spec.to_dict())
    assert native.spec == spec == scripted.spec
    batch = torch.rand(2, 3, 320, 320)
    with torch.inference_mode():
        expected = net((batch - 0.5) / 0.25)
        assert torch.allclose(scripted.module(scripted._prepare(batch)), expected, atol=1e-5)
        found = native(batch, score_threshold=0.005)
        assert sum(len(d) for d in found) > 0
        assert _same(found, scripted(batch, score_threshold=0.005))


class _FixedYolo(nn.Module):
    """Stands in for a YOLOv7 export: returns (raw predictions, features)."""

    def __init__(self, raw: Tensor) -> None:
        super().__init__()
        self.register_buffer("raw", raw)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        return self.raw.expand(x.shape[0], -1, -1) + 0 * x.mean(), [x]


def test_yolo_torchscript_detector(tmp_path: Path) -> None:
    raw = torch.tensor(
        [
            [
                [200.0, 200, 40, 40, 0.9, 0.9],
                [204, 200, 40, 40, 0.8, 0.9],
                [600, 100, 20, 20, 0.2, 0.5],
            ]
        ]
    )
    traced = torch.jit.trace(_FixedYolo(raw), torch.rand(1, 3, 640, 640), strict=False)
    traced.save(str(tmp_path / "yolo.ts"))
    spec = {"arch": "yolov7", "class_names": ["mitosis"], "patch_px": 320, "input_px": 640}
    detector = load_detector(tmp_path / "yolo.ts", "yolo-torchscript", spec)
    with torch.inference_mode():
        found = detector(torch.rand(2, 3, 320, 320), score_threshold=0.25)
    assert [len(d) for d in found] == [1, 1]
    # network pixels (640 input) are mapped back to the 320 px patch
    assert found[0].boxes.tolist() == [[90.0, 90.0, 110.0, 110.0]]
    assert found[0].scores.tolist() == pytest.approx([0.81])
    two_classes = load_detector(
        tmp_path / "yolo.ts", "yolo-torchscript", {**spec, "class_names": ["a", "b"]}
    )
    with pytest.raises(ValueError, match="outputs 1 classes"):
        two_classes(torch.rand(1, 3, 320, 320), score_threshold=0.25)


def test_lab_resnet50_checkpoint_loads(tmp_path: Path) -> None:
    lab = resnet50(weights=None)
    lab.fc = nn.Linear(2048, len(PHASES))
    lab.eval()
    state = {f"module.{k}": v for k, v in lab.state_dict().items()}  # saved from DataParallel
    torch.save(state, tmp_path / "lab_r50.pth")
    classifier = load_classifier(
        tmp_path / "lab_r50.pth", spec={"arch": "resnet50", "patch_px": 96}
    )
    crops = torch.rand(2, 3, 96, 96)
    with torch.inference_mode():
        probs = classifier(crops)
        assert torch.allclose(probs, torch.softmax(lab(crops), 1), atol=1e-5)
    assert probs.shape == (2, 5) and classifier.spec.class_names == PHASES


def test_classifier_resizes_crops_to_network_input(tmp_path: Path) -> None:
    spec = ModelSpec.from_dict(
        {"arch": "resnet10", "class_names": PHASES, "patch_px": 128, "input_px": 64}
    )
    save_native(build_classifier("resnet10"), spec, tmp_path / "cls.pt")
    classifier = load_classifier(tmp_path / "cls.pt")
    with torch.inference_mode():
        probs = classifier(torch.rand(3, 3, 128, 128))
    assert probs.shape == (3, 5)
    assert torch.allclose(probs.sum(1), torch.ones(3))


def test_bad_arch_and_format_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown classifier arch"):
        build_classifier("vgg11")
    with pytest.raises(ValueError, match="unsupported model format"):
        load_detector(tmp_path / "x.onnx", "onnx")
    with pytest.raises(ValueError, match="unsupported model format"):
        load_classifier(tmp_path / "x.ts", "yolo-torchscript")
