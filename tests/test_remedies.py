"""The degradation remedies (resnet.REMEDIES): each is its plain or residual twin's layers with one thing
changed, builds in both families, trains, and logs the per-layer diagnostics as the paper's two archs do."""

import dataclasses

import pandas as pd
import pytest
import torch
from torch import nn

import resnet
from bench.core.config import RunConfig
from bench.results import store
from bench.run.train import train_run
from resnet import DiracConv2d, build_model, count_parameters

CPU = torch.device("cpu")
NETS = [(20, "cifar"), (18, "imagenet"), (50, "imagenet")]


def _build(depth: int, arch: str) -> nn.Module:
    torch.manual_seed(0)
    return build_model(depth, arch, width=4, stem="cifar", num_classes=10)


def _conv_shapes(model: nn.Module) -> list[tuple[str, torch.Size]]:
    return [(name, module.weight.shape) for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]


@pytest.mark.slow
@pytest.mark.parametrize("depth,family", NETS)
@pytest.mark.parametrize("arch", resnet.REMEDIES)
def test_a_remedy_builds_in_both_families_with_its_twins_convs(depth, family, arch):
    model = _build(depth, arch)
    assert model.family == family and model.arch == arch
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    twin = _build(depth, resnet.get_arch(arch).twin)
    assert _conv_shapes(model) == _conv_shapes(twin)  # the same convolutions, named alike
    assert (model.shortcut is None) == (twin.shortcut is None)


@pytest.mark.parametrize("depth,family", NETS)
def test_each_remedys_parameters_against_its_twin(depth, family):
    plain, residual = _build(depth, "plain"), _build(depth, "residual")
    assert count_parameters(_build(depth, "zero-init")) == count_parameters(residual)
    dirac = _build(depth, "dirac")
    extra = sum(2 * m.out_channels for m in dirac.modules() if isinstance(m, DiracConv2d))
    assert extra > 0 and count_parameters(dirac) == count_parameters(plain) + extra  # two scalars per channel
    # Pre-activation: every norm moves before its conv (so it has the conv's input channels), and one more
    # norm ends the net.
    preact = _build(depth, "preact")
    norms = lambda m: sum(2 * n.num_features for n in m.modules() if isinstance(n, nn.BatchNorm2d))
    convs = lambda m: sum(p.numel() for n, p in m.named_parameters() if p.dim() == 4)
    assert convs(preact) == convs(residual)
    assert count_parameters(preact) - norms(preact) == count_parameters(residual) - norms(residual)
    assert preact.final_norm[0].num_features == preact.fc.in_features


@pytest.mark.parametrize("in_planes,out_planes,stride", [(6, 6, 1), (4, 8, 2), (8, 4, 1)])
def test_a_dirac_conv_whose_learned_part_is_zeroed_passes_its_input_through(in_planes, out_planes, stride):
    for kernel in (1, 3):
        conv = DiracConv2d(in_planes, out_planes, kernel, stride=stride, padding=kernel // 2, bias=False)
        with torch.no_grad():
            conv.beta.zero_()
        x = torch.randn(2, in_planes, 8, 8)
        shared = min(in_planes, out_planes)
        out = conv(x)
        torch.testing.assert_close(out[:, :shared], x[:, :shared, ::stride, ::stride], rtol=0, atol=0)
        assert not out[:, shared:].any()  # channels the input does not have start at zero


def test_a_dirac_conv_learns_through_its_weight_and_scalars():
    conv = DiracConv2d(4, 4, 3, padding=1, bias=False)
    conv(torch.randn(2, 4, 6, 6)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (conv.weight, conv.alpha, conv.beta))
    assert "delta" not in conv.state_dict()  # a constant of the shape, rebuilt, not saved


@pytest.mark.parametrize("depth", [20, 50])
def test_a_zero_init_net_starts_with_every_residual_branch_at_zero(depth):
    model = _build(depth, "zero-init").eval()
    x = torch.relu(torch.randn(2, model.layer1[0].conv1.in_channels, 8, 8))
    for name in model.stage_names:
        for block in getattr(model, name):
            last = getattr(block, f"bn{block.convs}")
            assert not last.weight.any()
    block = model.layer1[1]  # an identity shortcut: the block starts as relu(x) = x
    x = torch.relu(torch.randn(2, block.conv1.in_channels, 8, 8))
    torch.testing.assert_close(block(x), x)


def test_a_pre_activation_unit_adds_nothing_after_its_sum():
    model = _build(20, "preact").eval()
    block = model.layer1[1]
    x = torch.randn(2, block.conv1.in_channels, 8, 8)  # negative values pass the identity path unchanged
    with torch.no_grad():
        block.conv2.weight.zero_()
    torch.testing.assert_close(block(x), x)


@pytest.mark.slow
@pytest.mark.parametrize("arch", resnet.REMEDIES)
def test_a_tiny_run_of_each_remedy_trains_and_logs_its_layers(arch, tmp_path, tiny_data):
    config = RunConfig(arch=arch, depth=8, width=4, preset="test", dataset="synthetic", iterations=None, epochs=2,
                       batch_size=64, lr=0.05)
    assert train_run(config, tiny_data, tmp_path, CPU, notify=print) == store.FINISHED
    epochs = pd.read_parquet(tmp_path / store.EPOCHS)
    assert epochs["epoch"].tolist() == [1, 2] and epochs["train_loss"].notna().all()
    assert set(epochs["arch"]) == {arch}
    layers = pd.read_parquet(tmp_path / store.LAYERS)
    # The stem and the two 3x3 convs of each of the three blocks: the same layers as plain and residual.
    assert layers["layer"].nunique() == 7
    for kind in ("response_std", "grad_norm", "weight_norm"):
        # The last epoch's: at the first iteration a zero-init branch gets no gradient (its last norm's scale is
        # 0), as it should.
        rows = layers[layers["kind"] == kind]
        values = rows.loc[rows["epoch"] == rows["epoch"].max(), "value"]
        assert len(values) and values.notna().all() and (values > 0).all(), kind
    described = store.read_json(tmp_path / store.CONFIG)["model"]
    assert described["has_shortcuts"] == resnet.get_arch(arch).shortcut
    assert dataclasses.replace(config).run_id().startswith(f"{arch}-8-s0-")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_report_draws_a_panel_and_says_a_verdict_for_each_remedy(tmp_path, tiny_data):
    from PIL import Image

    from bench.report import report

    base = RunConfig(depth=8, width=4, preset="test", dataset="synthetic", iterations=None, epochs=1,
                     batch_size=64, lr=0.05)
    for arch in ("plain", "residual", "dirac"):
        for depth in (8, 14):
            config = dataclasses.replace(base, arch=arch, depth=depth)
            train_run(config, tiny_data, store.run_dir(tmp_path / "results", "synthetic", config.run_id()), CPU,
                      notify=lambda _: None, diagnostics=True)
    out = tmp_path / "reports"
    report.make_report([tmp_path / "results"], out, notify=lambda _: None)
    text = (out / "README.md").read_text()
    assert "dirac: the 14-layer net ends at" in text
    figure = next(out.rglob("degradation.png"))
    with Image.open(figure) as image:  # plain, residual, the one remedy that has runs and the gap: two rows of panels
        assert image.size[0] <= 2000 and image.size[1] > 0.6 * image.size[0]
    figure7 = next(out.rglob("figure7.png"))
    assert figure7.stat().st_size > 20_000
