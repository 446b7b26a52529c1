"""Model zoo: shapes on both input sizes, published parameter counts, options, errors, determinism."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunus.errors import ConfigError
from prunus.models import MODELS, build_model, count_parameters
from prunus.models.lenet import LeNet5
from prunus.models.mobilenetv2 import MobileNetV2
from prunus.models.nin import NIN
from prunus.models.resnet import ResNet18, ResNet50
from prunus.models.resnet_cifar import ResNet20, ResNet56
from prunus.models.vgg import VGG11, VGG16

NAMES = ["lenet5", "vgg11", "vgg16", "resnet18", "resnet50", "resnet20", "resnet56", "mobilenetv2", "nin",
         "cnin", "cnin_fp", "cnin_small", "cresnet18", "cresnet18_fp", "cresnet_small"]


def test_registry_lists_exactly_the_documented_models() -> None:
    assert list(MODELS) == NAMES
    for entry in MODELS.values():
        assert entry.description and "\n" not in entry.description


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("in_channels", "size", "num_classes"), [(1, 28, 10), (3, 32, 7)])
def test_output_shape_for_both_input_sizes(name: str, in_channels: int, size: int, num_classes: int) -> None:
    model = build_model(name, in_channels=in_channels, num_classes=num_classes).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, size, size))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("name", "options"), [
    ("resnet18", {"stem": "imagenet"}),
    ("mobilenetv2", {"stem": "imagenet"}),
    ("vgg11", {"width": 0.25}),
    ("nin", {"batch_norm": False}),
])
def test_output_shape_with_options(name: str, options: dict) -> None:
    model = build_model(name, in_channels=1, num_classes=7, **options).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)
        model = build_model(name, in_channels=3, num_classes=7, **options).eval()
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


# --- parameter counts -------------------------------------------------------------------------------


def test_lenet5_has_the_classic_61706_parameters() -> None:
    # conv1 1*6*25+6, conv2 6*16*25+16, fc 400*120+120, 120*84+84, 84*10+10
    assert count_parameters(LeNet5(1, 10)) == 156 + 2416 + 48120 + 10164 + 850 == 61_706


def test_resnet18_parameter_counts() -> None:
    assert count_parameters(ResNet18(3, 10)) == 11_173_962  # the usual CIFAR ResNet-18 figure
    assert count_parameters(ResNet18(3, 1000, stem="imagenet")) == 11_689_512  # torchvision resnet18


def test_resnet50_imagenet_matches_torchvision() -> None:
    assert count_parameters(ResNet50(3, 1000, stem="imagenet")) == 25_557_032


def test_cifar_resnets_with_projection_shortcuts() -> None:
    # The paper's 0.27M / 0.85M (269,722 / 853,018) use option A shortcuts, which have no
    # parameters.  Option B adds a 1x1 conv + BN at the two shape changes:
    # 16*32 + 2*32 = 576 and 32*64 + 2*64 = 2,176, i.e. 2,752 more at every depth.
    extra = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    assert count_parameters(ResNet20(3, 10)) == 269_722 + extra == 272_474
    assert count_parameters(ResNet56(3, 10)) == 853_018 + extra == 855_770


def test_mobilenetv2_matches_the_standard_architecture() -> None:
    imagenet = MobileNetV2(3, 1000, stem="imagenet")
    cifar = MobileNetV2(3, 1000, stem="cifar")
    assert count_parameters(imagenet) == 3_504_872  # torchvision mobilenet_v2
    assert count_parameters(cifar) == 3_504_872  # only strides differ
    strides = lambda m: [c.stride[0] for c in m.modules() if isinstance(c, nn.Conv2d) and c.stride[0] > 1]
    assert len(strides(imagenet)) == 5  # 32x downsampling
    assert len(strides(cifar)) == 2  # stem and first two stride-2 stages made stride 1


def test_vgg16_cifar_parameter_count_by_formula() -> None:
    widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    expected, cin = 0, 3
    for cout in widths:
        expected += 9 * cin * cout + cout + 2 * cout  # conv weight + bias, BN weight + bias
        cin = cout
    expected += 512 * 10 + 10  # the single classifier
    assert count_parameters(VGG16(3, 10)) == expected == 14_728_266


def test_count_parameters_trainable_only() -> None:
    model = LeNet5()
    model.fc3.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 61_706 - 850
    assert count_parameters(model) == 61_706


# --- options ------------------------------------------------------------------------------------------


def test_vgg11_width_half_channels() -> None:
    model = build_model("vgg11", in_channels=3, width=0.5)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 128, 256, 256, 256, 256]
    assert [c.in_channels for c in convs] == [3, 32, 64, 128, 128, 256, 256, 256]
    assert model.classifier.in_features == 256


def test_vgg_width_never_drops_a_layer() -> None:
    convs = [m for m in VGG11(width=0.001).modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [1] * 8


def test_mobilenetv2_width_rounds_to_multiples_of_8() -> None:
    model = MobileNetV2(3, 10, width=0.5)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].out_channels == 16
    assert all(c.out_channels % 8 == 0 for c in convs[:-1])
    assert convs[-1].out_channels == 1280  # the last layer is never narrowed


def test_resnet_stems() -> None:
    imagenet, cifar = ResNet18(3, 10, stem="imagenet"), ResNet18(3, 10)
    assert (imagenet.conv1.kernel_size, imagenet.conv1.stride) == ((7, 7), (2, 2))
    assert isinstance(imagenet.maxpool, nn.MaxPool2d)
    assert (cifar.conv1.kernel_size, cifar.conv1.stride) == ((3, 3), (1, 1))
    assert not any(isinstance(m, nn.MaxPool2d) for m in cifar.modules())


def test_nin_batch_norm_option() -> None:
    assert sum(isinstance(m, nn.BatchNorm2d) for m in NIN(batch_norm=True).modules()) == 8
    plain = NIN(batch_norm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert all(m.bias is not None for m in plain.modules() if isinstance(m, nn.Conv2d))


def test_model_name_is_case_insensitive() -> None:
    assert isinstance(build_model("ResNet20"), ResNet20)


# --- errors -------------------------------------------------------------------------------------------


def _one_sentence(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert message.endswith(".") and "\n" not in message
    return message


def test_unknown_model_name_lists_known_names() -> None:
    with pytest.raises(ConfigError) as err:
        build_model("alexnet")
    message = _one_sentence(err)
    assert "alexnet" in message
    assert all(name in message for name in NAMES)


@pytest.mark.parametrize(("name", "options", "field"), [
    ("vgg11", {"depth": 13}, "depth"),
    ("lenet5", {"width": 0.5}, "width"),
    ("vgg16", {"width": 0}, "width"),
    ("vgg16", {"width": -1.0}, "width"),
    ("vgg16", {"width": "half"}, "width"),
    ("mobilenetv2", {"width": float("nan")}, "width"),
    ("resnet18", {"stem": "foo"}, "stem"),
    ("resnet50", {"stem": "ImageNet"}, "stem"),
    ("mobilenetv2", {"stem": "foo"}, "stem"),
    ("nin", {"batch_norm": "yes"}, "batch_norm"),
    ("resnet20", {"num_classes": 0}, "num_classes"),
    ("resnet20", {"in_channels": 2.5}, "in_channels"),
])
def test_bad_option_names_the_option(name: str, options: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_model(name, **options)
    assert f"'{field}'" in _one_sentence(err)


def test_unknown_option_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="its options are: width, stem"):
        build_model("mobilenetv2", depth=3)
    with pytest.raises(ConfigError, match="takes no options"):
        build_model("resnet20", stem="cifar")


# --- structure and initialisation ---------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_weights(name: str) -> None:
    torch.manual_seed(0)
    a = build_model(name, in_channels=3)
    torch.manual_seed(0)
    b = build_model(name, in_channels=3)
    c = build_model(name, in_channels=3)  # different RNG state
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize("name", NAMES)
def test_pruning_friendly_modules(name: str) -> None:
    model = build_model(name)
    assert not any(getattr(m, "inplace", False) for m in model.modules())


def test_residual_blocks_expose_shortcuts() -> None:
    def projections(model: nn.Module) -> int:
        return sum(isinstance(m.shortcut, nn.Sequential) for m in model.modules() if hasattr(m, "shortcut"))

    assert projections(ResNet20()) == 2  # one per shape change
    assert projections(ResNet56()) == 2
    assert projections(ResNet18()) == 3
    assert projections(ResNet50()) == 4  # the first stage widens 64 -> 256
    blocks = [m for m in MobileNetV2().modules() if hasattr(m, "shortcut")]
    assert len(blocks) == 17 and sum(b.shortcut is not None for b in blocks) == 10


def test_residual_add_matches_manual_computation() -> None:
    block = ResNet20().layer2[0].eval()  # projection shortcut
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        main = block.bn2(block.conv2(block.relu1(block.bn1(block.conv1(x)))))
        expected = torch.relu(main + block.shortcut[1](block.shortcut[0](x)))
        assert torch.allclose(block(x), expected)


def test_convolutions_use_kaiming_normal_fan_out() -> None:
    conv = VGG16(3, 10).features[-4]  # last 512 -> 512 3x3 conv
    assert isinstance(conv, nn.Conv2d)
    expected_std = (2.0 / (512 * 9)) ** 0.5
    assert abs(conv.weight.std().item() / expected_std - 1) < 0.02
    assert abs(conv.weight.mean().item()) < 0.01 * expected_std
    assert torch.count_nonzero(conv.bias) == 0


@pytest.mark.parametrize(("size", "feature_map"), [(28, 5), (32, 6)])
def test_lenet5_sees_28x28_as_the_padded_32x32_field(size: int, feature_map: int) -> None:
    model, seen = LeNet5().eval(), []
    model.pool.register_forward_hook(lambda m, inputs, out: seen.append((inputs[0].shape[-1], out.shape[-1])))
    with torch.no_grad():
        model(torch.randn(1, 1, size, size))
    assert seen == [(feature_map, 5)]  # 16@5x5 at 28x28 (pooling is then exact identity), 6x6 -> 5x5 at 32x32
