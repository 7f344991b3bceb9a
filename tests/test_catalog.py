"""The architecture catalog behind `bench models`."""

import itertools
import json

import pytest
import torch
import torchvision

import resnet
from bench.core.errors import BenchError
from bench.report.catalog import architecture_table, format_count


@pytest.fixture(scope="module")
def imagenet_rows():
    # It counts the MACs of every ImageNet-layout net at 224, for seconds: every test that takes it is slow.
    # The paper's bottleneck layout, the one Table 1 counts; parameters do not depend on it.
    return architecture_table(224, families=("imagenet",), stride_on="1x1")


@pytest.mark.slow
def test_one_row_per_depth_and_arch(imagenet_rows):
    keys = [(r["family"], r["depth"], r["arch"]) for r in imagenet_rows]
    assert keys == list(itertools.product(["imagenet"], resnet.IMAGENET_DEPTHS, resnet.ALL_ARCHS))


@pytest.mark.slow
def test_residual_imagenet_rows_match_torchvision(imagenet_rows):
    for row in imagenet_rows:
        if row["arch"] == "residual":
            with torch.device("meta"):
                reference = getattr(torchvision.models, f"resnet{row['depth']}")(weights=None)
            assert row["params"] == resnet.count_parameters(reference)
            assert row["shortcut"] == "B"


@pytest.mark.slow
def test_plain_rows_have_no_shortcut_and_fewer_parameters(imagenet_rows):
    plain = {r["depth"]: r for r in imagenet_rows if r["arch"] == "plain"}
    residual = {r["depth"]: r for r in imagenet_rows if r["arch"] == "residual"}
    for depth in resnet.IMAGENET_DEPTHS:
        assert plain[depth]["shortcut"] is None
        # Option B's projections are the only difference.
        assert plain[depth]["params"] < residual[depth]["params"]
        assert plain[depth]["macs"] < residual[depth]["macs"]


@pytest.mark.slow
def test_rows_are_json_serialisable(imagenet_rows):
    assert json.loads(json.dumps(imagenet_rows)) == imagenet_rows


@pytest.mark.slow
def test_paper_layout_matches_table1_macs(imagenet_rows):
    with_paper = [r for r in imagenet_rows if r["paper_macs"] is not None]
    without = {(r["depth"], r["arch"]) for r in imagenet_rows if r["paper_macs"] is None}
    # The paper has no plain bottleneck nets, and none of the remedies.
    remedies = set(itertools.product(resnet.IMAGENET_DEPTHS, resnet.REMEDIES))
    assert without == {(50, "plain"), (101, "plain"), (152, "plain")} | remedies
    for row in with_paper:
        assert row["macs"] == pytest.approx(row["paper_macs"], rel=0.03), row
    assert {r["stride_on"] for r in imagenet_rows if r["block"] == "bottleneck"} == {"1x1"}


@pytest.mark.timeout(500)
@pytest.mark.slow
def test_full_table_covers_both_families():
    rows = architecture_table()
    keys = {(r["family"], r["depth"], r["arch"]) for r in rows}
    expected = set(itertools.product(["imagenet"], resnet.IMAGENET_DEPTHS, resnet.ALL_ARCHS)) | set(
        itertools.product(["cifar"], resnet.CIFAR_DEPTHS, resnet.ALL_ARCHS)
    )
    assert keys == expected and len(rows) == len(expected)
    for row in rows:
        if row["family"] == "cifar":
            assert row["paper_macs"] is None and row["block"] == "basic"
            if row["arch"] in resnet.REMEDIES:
                assert row["paper_params"] is None
                continue
            # Paper Table 6, to the figures it prints; option A keeps plain twins equal.
            digits = 3 if row["depth"] == 1202 else 2
            assert float(f"{row['params']:.{digits}g}") == row["paper_params"]
    json.dumps(rows)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"families": ("mnist",)}, "imagenet, cifar"), ({"input_size": 0}, "positive")],
)
def test_bad_input(kwargs, message):
    with pytest.raises(BenchError, match=message):
        architecture_table(**kwargs)


@pytest.mark.parametrize(
    "n, text",
    [
        (None, "-"),
        (0, "0"),
        (999, "999"),
        (272_474, "272K"),
        (11_689_512, "11.7M"),
        (1.8e9, "1.8G"),
        (11_513_626_624, "11.5G"),
    ],
)
def test_format_count(n, text):
    assert format_count(n) == text
