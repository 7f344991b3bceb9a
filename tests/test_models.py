"""The networks: paper parameter and multiply-add counts, torchvision parity, plain vs residual."""

import copy
import math

import pytest
import torch
import torchvision
from torch import nn

import resnet
from resnet import ModelConfigError, build_model, count_macs, count_parameters



@pytest.fixture(autouse=True)
def one_thread():
    """These nets are tiny: on a shared 2-core machine, a second OpenMP thread only spins and waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


ALL_DEPTHS = [("imagenet", d) for d in resnet.IMAGENET_DEPTHS] + [("cifar", d) for d in resnet.CIFAR_DEPTHS]


def on_meta(depth: int, arch: str = "residual", **kwargs) -> resnet.ResNet:
    """Build on the meta device: counts need shapes only, and it skips the init."""
    with torch.device("meta"):
        return build_model(depth, arch, **kwargs)


def torchvision_resnet(depth: int, meta: bool = False) -> nn.Module:
    with torch.device("meta" if meta else "cpu"):
        return getattr(torchvision.models, f"resnet{depth}")(weights=None)


@pytest.mark.parametrize(
    "depth, paper, digits",
    [(20, 0.27e6, 2), (32, 0.46e6, 2), (44, 0.66e6, 2), (56, 0.85e6, 2), (110, 1.7e6, 2),
     pytest.param(1202, 19.4e6, 3, marks=pytest.mark.slow)],
)
def test_cifar_parameters_match_paper_table6(depth, paper, digits):
    n = count_parameters(build_model(depth))  # small nets: the cpu builds them faster than meta
    assert float(f"{n:.{digits}g}") == paper


@pytest.mark.parametrize("depth", [pytest.param(d, marks=pytest.mark.slow) if d == 152 else d
                                   for d in resnet.IMAGENET_DEPTHS])
def test_imagenet_parameters_equal_torchvision(depth):
    ours, reference = on_meta(depth, num_classes=1000), torchvision_resnet(depth, meta=True)
    assert count_parameters(ours) == count_parameters(reference)
    # Same names and shapes: torchvision checkpoints load with strict=True.
    shapes = {k: v.shape for k, v in ours.state_dict().items()}
    assert shapes == {k: v.shape for k, v in reference.state_dict().items()}


@pytest.mark.parametrize("depth, paper", [(18, 1.8e9), (34, 3.6e9), (50, 3.8e9),
                                          pytest.param(101, 7.6e9, marks=pytest.mark.slow),
                                          pytest.param(152, 11.3e9, marks=pytest.mark.slow)])
def test_macs_match_paper_table1(depth, paper):
    # Table 1 counts the paper's own bottleneck, with the stride on the first 1x1 conv.
    macs = count_macs(on_meta(depth, num_classes=1000, stride_on="1x1"), 224)
    assert macs == pytest.approx(paper, rel=0.03)


def test_count_macs_by_hand_and_leaves_model_untouched():
    model = build_model(8, width=4, num_classes=10)  # cifar, one basic block per stage
    model.layer1.eval()  # a frozen stage must stay frozen
    # stem 3->4 at 32x32; stage 1: two 4->4 convs at 32x32; stage 2: 4->8 and 8->8 at 16x16;
    # stage 3: 8->16 and 16->16 at 8x8; fc 16->10. Option A adds no conv.
    expected = (
        32 * 32 * 4 * 3 * 9
        + 2 * 32 * 32 * 4 * 4 * 9
        + 16 * 16 * 8 * (4 + 8) * 9
        + 8 * 8 * 16 * (8 + 16) * 9
        + 16 * 10
    )
    assert count_macs(model, 32) == expected
    assert model.training and model.layer2.training and not model.layer1[0].bn1.training
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert not any(m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("depth, family", [(20, "cifar"), (56, "cifar"), (18, "imagenet"), (50, "imagenet")])
def test_option_a_twins_have_identical_parameters(depth, family):
    plain = on_meta(depth, "plain", family=family, shortcut="A")
    residual = on_meta(depth, "residual", family=family, shortcut="A")
    assert count_parameters(plain) == count_parameters(residual)
    assert plain.state_dict().keys() == residual.state_dict().keys()


def _zero_block_and_run(arch: str, block_path: str, x: torch.Tensor):
    """Zero a block's last BN, run the net, and return (block input, block output, logits)."""
    torch.manual_seed(0)
    model = build_model(20, arch, width=4).eval()
    block = model.get_submodule(block_path)
    nn.init.zeros_(block.bn2.weight)
    nn.init.zeros_(block.bn2.bias)
    seen = {}
    block.register_forward_hook(lambda m, inputs, out: seen.update(x=inputs[0].clone(), y=out.clone()))
    with torch.no_grad():
        logits = model(x)
    return seen["x"], seen["y"], logits


@pytest.mark.parametrize("block_path", ["layer1.1", "layer2.0"])  # identity and padded shortcut
def test_plain_net_has_no_path_around_a_block(block_path):
    x1, x2 = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    block_in, block_out, logits1 = _zero_block_and_run("residual", block_path, x1)
    _, _, logits2 = _zero_block_and_run("residual", block_path, x2)
    # The residual block reduces to relu(shortcut(x)) = shortcut(x), as its input is post-ReLU.
    extra, stride = block_out.shape[1] - block_in.shape[1], block_in.shape[2] // block_out.shape[2]
    shortcut = resnet.PadShortcut(extra, stride)
    torch.testing.assert_close(block_out, shortcut(block_in))
    assert not torch.allclose(logits1, logits2)

    _, block_out, logits1 = _zero_block_and_run("plain", block_path, x1)
    _, _, logits2 = _zero_block_and_run("plain", block_path, x2)
    assert torch.count_nonzero(block_out) == 0
    torch.testing.assert_close(logits1, logits2)  # nothing of the input gets past the block


@pytest.mark.parametrize("depth", [18, *(pytest.param(d, marks=pytest.mark.slow) for d in (34, 50))])
def test_outputs_match_torchvision(depth):
    torch.manual_seed(depth)
    reference = torchvision_resnet(depth)
    # Random BN statistics and affine terms, so that a swapped BN would show.
    for m in reference.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    ours = on_meta(depth, num_classes=1000)  # its own init would be overwritten anyway
    ours.load_state_dict(reference.state_dict(), strict=True, assign=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), reference.eval()(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", resnet.ARCHS)
@pytest.mark.parametrize(
    "family, depth", [pytest.param(*fd, marks=pytest.mark.slow) if fd[1] == 1202 else fd for fd in ALL_DEPTHS]
)
def test_every_depth_trains_a_step_on_cpu(family, depth, arch):
    model = build_model(depth, arch, family=family, width=4)
    assert (model.depth, model.family, model.arch) == (depth, family, arch)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    out.logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    # Plain-1202's gradient overflows to inf/nan in its early layers: the degradation itself.
    if not (arch == "plain" and depth == 1202):
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.slow
def test_resnet_1202_runs_forward():
    # Train mode: with eval-mode BN at init, 600 un-normalised residual additions overflow.
    model = build_model(1202, width=4)
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 32, 32))).all()


def test_defaults_and_provenance():
    def provenance(net):
        return net.family, net.shortcut, net.stem, net.width, net.block

    net = on_meta(18)
    assert provenance(net) == ("imagenet", "B", "imagenet", 64, "basic")
    assert net.conv1.kernel_size == (7, 7) and isinstance(net.maxpool, nn.MaxPool2d)
    net = build_model(20)
    assert provenance(net) == ("cifar", "A", "cifar", 16, "basic")
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, nn.Identity)
    assert net.stage_names == ("layer1", "layer2", "layer3") and net.fc.in_features == 64
    assert build_model(20, "plain").shortcut is None


def test_family_inference():
    assert resnet.family_of(50) == "imagenet" and resnet.family_of(56) == "cifar"
    # 50 is also 6n+2: the CIFAR net of that depth needs family="cifar".
    net = on_meta(50, family="cifar")
    assert (net.family, net.block, len(net.layer1)) == ("cifar", "basic", 8)
    assert on_meta(8).family == "cifar"


def test_shortcut_options():
    def summary(shortcut):
        net = on_meta(18, shortcut=shortcut, width=8)
        blocks = [b for name in net.stage_names for b in getattr(net, name)]
        return count_parameters(net), [type(b.downsample).__name__ for b in blocks]

    params_a, kinds_a = summary("A")
    params_b, kinds_b = summary("B")
    params_c, kinds_c = summary("C")
    first_of_stage = [2, 4, 6]  # indices of the blocks that halve the resolution
    assert [i for i, k in enumerate(kinds_a) if k == "PadShortcut"] == first_of_stage
    assert [i for i, k in enumerate(kinds_b) if k == "Sequential"] == first_of_stage
    assert kinds_c == ["Sequential"] * 8
    assert params_a < params_b < params_c


def test_pad_shortcut_subsamples_and_pads_with_zeros():
    x = torch.randn(2, 3, 5, 5)
    y = resnet.PadShortcut(extra=5, stride=2)(x)
    assert y.shape == (2, 8, 3, 3)
    torch.testing.assert_close(y[:, :3], x[:, :, ::2, ::2])
    assert torch.count_nonzero(y[:, 3:]) == 0


@pytest.mark.slow
def test_stride_on_places_the_bottleneck_stride():
    v15 = build_model(50, width=4)
    paper = build_model(50, width=4, stride_on="1x1")
    assert v15.layer2[0].conv1.stride == (1, 1) and v15.layer2[0].conv2.stride == (2, 2)
    assert paper.layer2[0].conv1.stride == (2, 2) and paper.layer2[0].conv2.stride == (1, 1)
    assert (v15.stride_on, paper.stride_on, build_model(18).stride_on) == ("3x3", "1x1", None)
    assert count_macs(paper, 64) < count_macs(v15, 64)


def test_imagenet_family_with_cifar_stem_keeps_resolution():
    net = build_model(18, stem="cifar", width=4).eval()
    shapes = []
    net.layer4.register_forward_hook(lambda m, inputs, out: shapes.append(out.shape))
    net(torch.randn(1, 3, 32, 32))
    assert shapes == [(1, 32, 4, 4)]  # 32 / 8: no stem downsampling, three stride-2 stages


def test_kaiming_initialisation():
    torch.manual_seed(0)
    net = build_model(20)
    conv = net.layer3[0].conv2  # 64 -> 64, 3x3: fan_out = 576
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / 576), rel=0.05)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(bool((m.weight == 1).all() and (m.bias == 0).all()) for m in bns)


def group_norm(channels: int) -> nn.Module:
    return nn.GroupNorm(1, channels)


@pytest.mark.parametrize("depth, shortcut", [(18, "B"), (18, "C"), (50, "B"), (20, "A"), (20, "C")])
def test_injected_norm_layer_replaces_every_batchnorm(depth, shortcut):
    default = build_model(depth, shortcut=shortcut, width=4)
    net = build_model(depth, shortcut=shortcut, width=4, norm_layer=group_norm)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == sum(isinstance(m, nn.BatchNorm2d) for m in default.modules())
    projections = [b.downsample for name in net.stage_names for b in getattr(net, name)
                   if isinstance(b.downsample, nn.Sequential)]
    assert (len(projections) > 0) == (shortcut != "A")
    assert all(isinstance(p[1], nn.GroupNorm) for p in projections)
    # Same parameters under the same names (GroupNorm has BatchNorm's affine terms); only the buffers go.
    assert dict(net.named_parameters()).keys() == dict(default.named_parameters()).keys()
    assert all(bool((m.weight == 1).all() and (m.bias == 0).all()) for m in norms)
    out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("depth", [18, 50])
def test_injected_norm_layer_matches_torchvision(depth):
    ours = on_meta(depth, num_classes=1000, norm_layer=group_norm)
    with torch.device("meta"):
        reference = getattr(torchvision.models, f"resnet{depth}")(weights=None, norm_layer=group_norm)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()}


def test_default_norm_layer_is_batchnorm():
    torch.manual_seed(0)
    default = build_model(20, shortcut="B")
    torch.manual_seed(0)
    explicit = build_model(20, shortcut="B", norm_layer=nn.BatchNorm2d)
    assert default._norm_layer is nn.BatchNorm2d
    assert default.state_dict().keys() == explicit.state_dict().keys()
    for key, value in default.state_dict().items():
        torch.testing.assert_close(explicit.state_dict()[key], value, rtol=0, atol=0)
    assert "norm_layer" not in resnet.nets.OPTIONS  # a keyword argument, not an option


@pytest.mark.parametrize("depth", [20, 50])
def test_channels_last_matches_contiguous(depth):
    torch.manual_seed(0)
    net = build_model(depth, width=4).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = net(x)
        got = net.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_torch_compile_matches_eager():
    torch.manual_seed(0)
    eager = build_model(8, width=4)  # one block per stage: identity and padded shortcuts
    compiled = torch.compile(copy.deepcopy(eager))
    x = torch.randn(4, 3, 32, 32)
    expected, got = eager(x), compiled(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    got.sum().backward()
    assert all(p.grad is not None for p in compiled.parameters())


@pytest.mark.parametrize(
    "kwargs, valid",
    [
        ({"depth": 19}, "18, 34, 50, 101, 152"),
        ({"depth": 20, "shortcut": "D"}, "A, B, C"),
        ({"depth": 20, "arch": "dense"}, "plain, residual"),
        ({"depth": 20, "stem": "big"}, "imagenet, cifar"),
        ({"depth": 20, "family": "mnist"}, "imagenet, cifar"),
        ({"depth": 20, "family": "imagenet"}, "18, 34, 50, 101, 152"),
        ({"depth": 18, "family": "cifar"}, "6n+2"),
        ({"depth": 50, "stride_on": "2x2"}, "3x3, 1x1"),
        ({"depth": 20, "dropout": 0.1}, "stride_on, in_channels"),
        ({"depth": 20, "width": 0}, "positive integer"),
        ({"depth": "20"}, "positive integer"),
    ],
)
def test_bad_input_names_the_valid_choices(kwargs, valid):
    with pytest.raises(ValueError, match=valid.replace("+", r"\+")) as info:
        build_model(**kwargs)
    assert isinstance(info.value, ModelConfigError)  # the CLI prints it on one line
    assert "\n" not in str(info.value)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.timeout(600)  # a first torch.compile on a fresh machine builds its kernels cold; never timed on a GPU
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_channels_last_compiled_bf16_step():
    torch.manual_seed(0)
    model = build_model(20).cuda().to(memory_format=torch.channels_last)
    x = torch.randn(8, 3, 32, 32, device="cuda").to(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = torch.compile(model)(x)
    out.float().logsumexp(1).mean().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
