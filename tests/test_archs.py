"""The arch registry (resnet.archs): each arch is one entry, and one registered in a test is built, trained by
`bench run` and drawn by `bench report` with no other file changed."""

import pandas as pd
import pytest
import torch
from torch import nn

import resnet
from resnet import Arch, DiracConv2d, ModelConfigError, build_model, get_arch, register, unregister
from tests.conftest import TINY_GRID, bench


def test_the_built_in_archs_state_what_their_blocks_do():
    assert resnet.arch_names() == ("plain", "residual", "preact", "zero-init", "dirac")
    assert resnet.paper_archs() == resnet.ARCHS == ("plain", "residual")
    assert resnet.remedies() == resnet.REMEDIES == ("preact", "zero-init", "dirac")
    assert resnet.SHORTCUT_ARCHS == ("residual", "preact", "zero-init")
    assert [(a.preact, a.zero_init, a.dirac) for a in resnet.registered()] == [
        (False, False, False), (False, False, False), (True, False, False), (False, True, False), (False, False, True)]
    assert {a.name: a.twin for a in resnet.registered()} == {
        "plain": "plain", "residual": "residual", "preact": "residual", "zero-init": "residual", "dirac": "plain"}


@pytest.mark.parametrize("entry, message", [
    (Arch("Dense", "t", "cool", shortcut=True), "lowercase letters"),
    (Arch("a b", "t", "cool", shortcut=True), "lowercase letters"),
    (Arch("gate", " ", "cool", shortcut=True), "needs a title"),
    (Arch("gate", "t", "amber", shortcut=True), "choose one of cool, warm"),
    (Arch("gate", "t", "warm", shortcut=False, preact=True), "preact needs shortcut=True"),
    (Arch("gate", "t", "warm", shortcut=False, zero_init=True), "zero_init needs shortcut=True"),
    (Arch("gate", "t", "cool", shortcut=True, preact=True, dirac=True), "do not combine"),
    (Arch("plain", "t", "warm", shortcut=False), "already registered"),
])
def test_an_entry_that_cannot_be_built_or_drawn_is_refused_with_the_fix(entry, message):
    with pytest.raises(ModelConfigError, match=message):
        register(entry)
    assert resnet.arch_names() == ("plain", "residual", "preact", "zero-init", "dirac")


def test_built_in_archs_stay_and_unknown_ones_name_the_registered():
    with pytest.raises(ModelConfigError, match="built in"):
        unregister("plain")
    with pytest.raises(ModelConfigError, match="choose one of plain, residual, preact, zero-init, dirac"):
        get_arch("dense")
    with pytest.raises(ModelConfigError, match="unknown arch 'dense'"):
        build_model(20, "dense")


def test_a_registered_arch_builds_from_its_flags_alone(throwaway_arch):
    torch.manual_seed(0)
    model = build_model(20, throwaway_arch.name, width=4)
    twin = build_model(20, throwaway_arch.twin, width=4)
    assert model.arch == "dirac-residual" and model.shortcut == "A"
    shapes = lambda m: [(n, c.weight.shape) for n, c in m.named_modules() if isinstance(c, nn.Conv2d)]
    assert shapes(model) == shapes(twin)
    block_convs = [m for n, m in model.named_modules() if n.startswith("layer") and isinstance(m, nn.Conv2d)]
    assert block_convs and all(isinstance(c, DiracConv2d) for c in block_convs)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert throwaway_arch.name in resnet.arch_names() and resnet.has_shortcut(throwaway_arch.name)


@pytest.mark.slow
def test_bench_run_and_report_take_a_registered_arch_end_to_end(throwaway_arch, tmp_path, data_dir):
    results, out = tmp_path / "results", tmp_path / "reports"
    result = bench("run", *TINY_GRID, "--depths", "14", "--arch", "plain", throwaway_arch.name,
                   "--data-dir", str(data_dir), "--results", str(results))
    assert result.exit_code == 0, result.output
    runs = sorted(p.name for p in (results / "synthetic").iterdir())
    assert sum(r.startswith("dirac-residual-8-s0-") for r in runs) == 1 and len(runs) == 4
    result = bench("report", "--results", str(results), "--out", str(out), "--format", "svg")
    assert result.exit_code == 0, result.output
    readme = (out / "README.md").read_text()
    assert "dirac-residual" in readme
    figure = next(out.rglob("degradation.svg")).read_text()
    for depth in (8, 14):
        assert f'id="dirac-residual-{depth}-train"' in figure and f'id="plain-{depth}-train"' in figure
    table = pd.read_csv(next(out.rglob("errors.csv")))
    assert set(table["arch"]) == {"plain", "dirac-residual"}


def test_the_cli_refuses_an_unregistered_arch_with_the_registered_ones(data_dir):
    result = bench("run", "--depths", "8", "--arch", "gated", "--dataset", "synthetic", "--dry-run")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "'gated' is not one of 'plain', 'residual', 'preact', 'zero-init', 'dirac'" in result.stderr
