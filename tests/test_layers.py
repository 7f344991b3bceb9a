"""Per-layer diagnostics (bench.run.layers, layers.parquet, bench analyze): they measure what they claim, cost the
training nothing, survive a resume, and the report plots exactly what was recorded."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from bench.core import records
from bench.run import layers

from bench.results import checkpoints, reading, store

from bench.core.errors import BenchError
from bench.report import tables
from bench.report.analyze import analyze_run
from bench.report.layer_plots import figure7, gradient_figure
from bench.report.report import make_report
from bench.run.train import train_run
from resnet import build_model
from tests.conftest import CPU, TINY_RUN, MEASURED_COLUMNS



def _layers(directory) -> pd.DataFrame:
    return pd.read_parquet(directory / store.LAYERS)


def _trained_bn(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so eval-mode outputs are not just N(0, 1)."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator))
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator))
    return model.eval()


def _direct_responses(model, x: torch.Tensor) -> list[torch.Tensor]:
    """The 3x3 layers' BN outputs of a BasicBlock ResNet, computed by hand."""
    out = model.bn1(model.conv1(x))
    responses = [out]
    h = F.relu(out)
    for stage in model.stage_names:
        for block in getattr(model, stage):
            a = block.bn1(block.conv1(h))
            b = block.bn2(block.conv2(F.relu(a)))
            responses += [a, b]
            shortcut = h if block.downsample is None else block.downsample(h)
            h = F.relu(b + shortcut) if block.residual else F.relu(b)
    return responses


@pytest.mark.parametrize("arch", ["plain", "residual"])
def test_response_std_equals_a_direct_computation(arch):
    model = _trained_bn(build_model(8, arch, width=4))
    x = torch.randn(48, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = [r.double().std().item() for r in _direct_responses(model, x)]
    model.train()  # response_stds must switch to eval mode itself, and back
    measured = layers.response_stds(model, iter([x[:20], x[20:]]))  # two batches: sums must add up
    assert model.training
    assert measured == pytest.approx(expected, rel=1e-9)
    assert len(measured) == 7  # stem + 3 stages x 1 block x 2


def test_plain_and_residual_twins_have_the_same_layers():
    for depth in (8, 18, 50):
        plain, residual = (layers.conv_layers(build_model(depth, arch, width=4)) for arch in ("plain", "residual"))
        assert [(c.name, c.stage, c.block) for c in plain] == [(c.name, c.stage, c.block) for c in residual]
        assert len(plain) == depth - 1  # every weighted layer but fc; shortcut projections left out
    bottleneck = layers.three_by_three(build_model(50, "residual", width=4, stem="cifar"))
    assert len(bottleneck) == 1 + 16  # the cifar stem and each block's middle conv


@pytest.mark.slow
def test_diagnostics_leave_training_unchanged(tmp_path, tiny_data):
    train_run(TINY_RUN, tiny_data, tmp_path / "with", CPU)
    train_run(TINY_RUN, tiny_data, tmp_path / "without", CPU, diagnostics=False)
    with_, without = (pd.read_parquet(tmp_path / name / store.EPOCHS).drop(columns=MEASURED_COLUMNS)
                      for name in ("with", "without"))
    pd.testing.assert_frame_equal(with_, without)
    assert not (tmp_path / "without" / store.LAYERS).exists() or _layers(tmp_path / "without").empty


@pytest.mark.slow
def test_layer_rows_cover_each_epoch_and_the_first_step(tmp_path, tiny_data):
    train_run(TINY_RUN, tiny_data, tmp_path, CPU)
    rows = _layers(tmp_path)
    assert list(rows.columns) == list(records.LAYER_SCHEMA.names)
    grads = rows[rows["kind"] == records.GRAD_NORM]
    assert sorted(grads["iteration"].unique()) == [1, 8, 16, 24]  # 512 images / 64 = 8 steps an epoch
    responses = rows[rows["kind"] == records.RESPONSE_STD]
    assert sorted(responses["epoch"].unique()) == [1, 2, 3]
    assert responses.groupby("epoch").size().eq(7).all()
    assert (rows["value"] > 0).all() and rows["value"].map(np.isfinite).all()


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_a_resumed_run_has_the_same_layer_rows_without_gaps_or_duplicates(tmp_path, tiny_data):
    train_run(TINY_RUN, tiny_data, tmp_path / "whole", CPU)

    def interrupt(iteration, total, stats):
        if iteration in (1, 11):  # right after the first step's gradients, and mid-epoch 2
            raise KeyboardInterrupt

    for _ in range(2):
        with pytest.raises(KeyboardInterrupt):
            train_run(TINY_RUN, tiny_data, tmp_path / "cut", CPU, on_step=interrupt)
    assert train_run(TINY_RUN, tiny_data, tmp_path / "cut", CPU) == store.FINISHED
    pd.testing.assert_frame_equal(_layers(tmp_path / "whole"), _layers(tmp_path / "cut"))


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_figure7_and_gradient_figure_plot_what_layers_parquet_holds(tmp_path, tiny_data):
    results = tmp_path / "results"
    for arch in ("plain", "residual"):
        config = dataclasses.replace(TINY_RUN, arch=arch)
        train_run(config, tiny_data, store.run_dir(results, "synthetic", config.run_id()), CPU)
    _, runs = reading.read_results([results])
    rows = reading.read_layers(runs)
    fig = figure7(tables.layer_profile(rows, records.RESPONSE_STD), runs)
    lines = {line.get_gid(): line for ax in fig.axes for line in ax.get_lines() if line.get_gid()}
    for run in runs.itertuples():
        parquet = pd.read_parquet(store.run_dir(results, "synthetic", run.run_id) / store.LAYERS)
        last = parquet[(parquet["kind"] == records.RESPONSE_STD) & (parquet["epoch"] == 3)].sort_values("layer")
        np.testing.assert_allclose(lines[f"{run.arch}-8-layer"].get_ydata(), last["value"])
        np.testing.assert_allclose(lines[f"{run.arch}-8-sorted"].get_ydata(), np.sort(last["value"])[::-1])
        first = parquet[(parquet["kind"] == records.GRAD_NORM) & (parquet["iteration"] == 1)].sort_values("layer")
        fig = gradient_figure(tables.layer_profile(rows, records.GRAD_NORM, "first"),
                              tables.layer_profile(rows, records.GRAD_NORM, "last"), runs)
        grads = {line.get_gid(): line for ax in fig.axes for line in ax.get_lines() if line.get_gid()}
        np.testing.assert_allclose(grads[f"{run.arch}-8-grad-first"].get_ydata(), first["value"])
    ratios = tables.response_ratios(tables.layer_profile(rows, records.RESPONSE_STD))
    assert ratios["depth"].tolist() == [8] and ratios["ratio"].iloc[0] > 0

    written = {p.name for p in make_report([results], tmp_path / "reports", notify=lambda m: None)}
    assert {"figure7.png", "gradients.png", "responses.md", "figure7.csv"} <= written
    assert "x the plain net's" in (tmp_path / "reports" / "README.md").read_text()


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_analyze_recomputes_responses_over_the_whole_test_split(tmp_path, data_dir):
    from bench.data.data import load_dataset, take_subset
    from bench.run.step import prepare_inputs
    from bench.run.train import make_model

    data = load_dataset("synthetic", data_dir, progress=False)  # what analyze loads for a synthetic run
    config = dataclasses.replace(TINY_RUN, epochs=1, test_subset=None)
    run = store.run_dir(tmp_path, "synthetic", config.run_id())  # a run folder is named by its run_id
    train_run(config, take_subset(data, 512, 128), run, CPU, diagnostics=False)  # as before layers.parquet
    analyze_run(run, data_dir, device="cpu", notify=lambda m: None)
    rows = _layers(run)
    assert set(rows["kind"]) == {records.RESPONSE_STD} and (rows["epoch"] == 1).all() and len(rows) == 7

    model = make_model(config, data)
    model.load_state_dict(checkpoints.load_checkpoint(run)["model"])
    expected = layers.response_stds(model, iter([prepare_inputs(data.test_images, data.mean, config)]))
    np.testing.assert_allclose(rows.sort_values("layer")["value"], expected, rtol=1e-9)

    # A run stopped mid-epoch: its weights belong to no epoch's end (its own folder, named by its run_id too).
    other = store.run_dir(tmp_path / "other", "synthetic", config.run_id())
    with pytest.raises(KeyboardInterrupt):
        train_run(config, take_subset(data, 512, 128), other, CPU,
                  on_step=lambda i, total, stats: (_ for _ in ()).throw(KeyboardInterrupt) if i == 3 else None)
    with pytest.raises(BenchError, match="middle of an epoch"):
        analyze_run(other, data_dir, device="cpu", notify=lambda m: None)

    (run / store.CHECKPOINT).unlink()
    with pytest.raises(BenchError, match="no checkpoint"):
        analyze_run(run, data_dir, device="cpu", notify=lambda m: None)


def test_the_probe_spreads_over_a_class_sorted_split():
    labels = torch.arange(10).repeat_interleave(150)  # 1,500 test images sorted by class
    assert torch.bincount(layers.response_probe(labels)).tolist() == [100] * 10
    assert torch.equal(layers.response_probe(labels[:700]), labels[:700])  # fewer than 1,000: all of them
    assert torch.equal(layers.response_probe(torch.arange(10_000)), torch.arange(0, 10_000, 10))
