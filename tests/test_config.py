import dataclasses

import pytest

from bench.core.config import (IMAGENET, PAPER, PRESETS, QUICK, GridConfig, RunConfig, at_batch, paper_rules, run_config,
                               validate, with_optimizer)
from bench.core.errors import BenchError


def test_paper_preset_is_section_4_2():
    assert (PAPER.batch_size, PAPER.lr, PAPER.iterations, PAPER.momentum, PAPER.weight_decay) == (
        128, 0.1, 64_000, 0.9, 1e-4)
    assert [round(f * PAPER.iterations) for f in PAPER.lr_decay_at] == [32_000, 48_000]
    assert PAPER.lr_decay == 0.1


def test_imagenet_preset_is_section_3_4_as_torchvisions_reference_trains_it():
    assert (IMAGENET.optimizer, IMAGENET.momentum, IMAGENET.weight_decay) == ("sgd", 0.9, 1e-4)
    assert (IMAGENET.batch_size, IMAGENET.lr, IMAGENET.epochs, IMAGENET.iterations) == (256, 0.1, 90, None)
    assert [f * IMAGENET.epochs for f in IMAGENET.lr_decay_at] == pytest.approx([30, 60]) and IMAGENET.lr_decay == 0.1
    assert IMAGENET.input_size == 224 and dataclasses.replace(IMAGENET, depth=50).stem_at(224) is None  # 7x7 stem
    assert paper_rules(dataclasses.replace(IMAGENET, depth=152)).warmup_lr is None


def test_only_the_imagenet_preset_scales_its_lr_with_the_batch():
    assert at_batch(IMAGENET, 512).lr == pytest.approx(0.2) and at_batch(IMAGENET, 64).lr == pytest.approx(0.025)
    assert at_batch(IMAGENET, 512).batch_size == 512 and at_batch(IMAGENET, None) == IMAGENET
    assert at_batch(IMAGENET, 256) == IMAGENET
    for preset in (PAPER, QUICK):  # section 4.2's lr at any batch, as before: the same runs, the same run_ids
        assert at_batch(preset, 512).lr == preset.lr
        assert at_batch(preset, preset.batch_size) == preset
    adam = with_optimizer(at_batch(IMAGENET, 512), "adam")  # torch's Adam lr, unscaled
    assert adam.lr == with_optimizer(IMAGENET, "adam").lr


def test_run_id_is_stable_and_tracks_every_field():
    a = RunConfig(depth=20, arch="plain")
    assert a.run_id() == RunConfig(depth=20, arch="plain").run_id()
    assert a.run_id().startswith("plain-20-s0-")
    assert a.run_id() != dataclasses.replace(a, lr=0.05).run_id()
    assert a.run_id() != dataclasses.replace(a, augment=False).run_id()  # a field added later, when not default
    assert a.run_id() == dataclasses.replace(a, device="cuda", compile=True).run_id()  # resumes elsewhere
    assert RunConfig.from_dict(a.to_dict()) == a


def test_grid_expands_depth_arch_seed_and_shards_cover_it_once():
    grid = GridConfig(base=QUICK, depths=(18, 34), seeds=(0, 1, 2))
    runs = grid.runs()
    assert len(runs) == 2 * 2 * 3
    assert len({r.run_id() for r in runs}) == len(runs)
    shards = [GridConfig(base=QUICK, depths=(18, 34), seeds=(0, 1, 2), shard=(i, 5)).runs() for i in range(1, 6)]
    ids = [r.run_id() for shard in shards for r in shard]
    assert sorted(ids) == sorted(r.run_id() for r in runs)  # every run exactly once


def test_paper_rules_warm_up_only_the_deep_cifar_nets():
    assert paper_rules(dataclasses.replace(PAPER, depth=110)).warmup_lr == pytest.approx(0.01)
    assert paper_rules(dataclasses.replace(PAPER, depth=56)).warmup_lr is None
    assert paper_rules(dataclasses.replace(QUICK, depth=110)).warmup_lr is None


@pytest.mark.parametrize("change, message", [
    ({"depth": 19}, "19"),
    ({"arch": "dense"}, "plain, residual"),
    ({"shortcut": "D"}, "A, B, C"),
    ({"precision": "fp8"}, "fp32, bf16"),
    ({"epochs": 3}, "exactly one of"),
    ({"batch_size": 0}, "--batch-size"),
    ({"optimizer": "lion"}, "sgd, adam, adamw"),
    ({"optimizer": "adam", "momentum": 0.9}, "drop --momentum"),
    ({"lr_decay_at": (0.5, 1.0)}, "outside the run"),
    ({"lr_decay_at": (0.0,)}, "outside the run"),
    ({"weight_decay": -1e-4}, "--weight-decay"),
    ({"input_size": 0}, "--input-size must be a positive integer"),
    ({"input_size": -32}, "--input-size must be a positive integer"),
    # One image of 1x1 pixels leaves BatchNorm one value per channel to normalise in training.
    ({"input_size": 1, "batch_size": 1, "depth": 18}, "--input-size 1 is too small for residual-18"),
])
def test_validate_rejects_bad_input_with_the_choices(change, message):
    with pytest.raises(BenchError, match=message):
        validate(dataclasses.replace(PAPER, **change))


def test_presets_validate():  # an unknown name is refused by the CLI's enum (tests/test_cli.py)
    for config in PRESETS.values():
        validate(dataclasses.replace(config, depth=18))


@pytest.mark.parametrize(("flags", "precision", "device", "warned"), [
    ({"avx2", "fma"}, "bf16", "cpu", True),  # Zen 3: bf16 emulated, measured 11x slower than fp32
    ({"avx2", "avx512f", "avx512_bf16"}, "bf16", "cpu", False),
    ({"avx2", "amx_tile", "amx_bf16"}, "bf16", "cpu", False),
    ({"avx2", "fma"}, "fp32", "cpu", False),
    ({"avx2", "fma"}, "bf16", "cuda", False),  # the GPU's bf16 is not the CPU's
    (None, "bf16", "cpu", False),  # no /proc/cpuinfo: nothing known, nothing said
])
def test_bf16_on_a_cpu_without_bf16_instructions_is_warned_of(monkeypatch, flags, precision, device, warned):
    import torch

    from bench.core import provenance
    from bench.core.config import precision_notice

    monkeypatch.setattr(provenance, "cpu_flags", lambda: None if flags is None else frozenset(flags))
    notice = precision_notice(precision, torch.device(device))
    assert (notice is not None) == warned
    if warned:
        assert "avx512_bf16" in notice and "--precision fp32" in notice and "\n" not in notice


def test_adam_takes_torchs_defaults_and_keeps_the_presets_schedule():
    import torch

    adam = with_optimizer(QUICK, "adam")
    defaults = torch.optim.Adam([torch.zeros(1, requires_grad=True)]).defaults
    assert (adam.lr, adam.weight_decay, adam.momentum) == (defaults["lr"], defaults["weight_decay"], 0.0)
    assert (adam.epochs, adam.lr_decay_at, adam.batch_size) == (QUICK.epochs, QUICK.lr_decay_at, QUICK.batch_size)
    assert with_optimizer(QUICK, "adamw").weight_decay == torch.optim.AdamW(
        [torch.zeros(1, requires_grad=True)]).defaults["weight_decay"]
    assert with_optimizer(QUICK, "sgd") == QUICK
    validate(dataclasses.replace(adam, depth=18))


def test_run_config_puts_the_options_given_on_the_preset_at_its_batch_under_its_optimizer():
    assert run_config("quick", lr=None, width=None, channels_last=None) == QUICK  # nothing given: the preset
    scaled = run_config("imagenet", batch_size=512, train_subset=0, test_subset=100)
    assert (scaled.lr, scaled.batch_size) == (pytest.approx(0.2), 512)  # the batch first: the lr follows it
    assert (scaled.train_subset, scaled.test_subset) == (None, 100)  # a subset of 0 is all the images
    assert run_config("imagenet", "adam", batch_size=512, lr=0.5).lr == 0.5  # --lr on top of the optimizer's
    assert run_config("imagenet", "adam", batch_size=512) == with_optimizer(at_batch(IMAGENET, 512), "adam")
    assert (run_config("paper", epochs=3).epochs, run_config("paper", epochs=3).iterations) == (3, None)


def test_the_optimizer_enters_the_run_id_only_when_it_is_not_sgd():
    sgd = dataclasses.replace(QUICK, depth=18)
    assert "optimizer" not in sgd.identity()  # every run made before --optimizer keeps its id
    adam = with_optimizer(sgd, "adam")
    assert adam.identity()["optimizer"] == "adam" and adam.run_id() != sgd.run_id()
    # Adam at SGD's recipe is still another run than SGD's.
    assert dataclasses.replace(sgd, optimizer="adam", momentum=0.0).run_id() != dataclasses.replace(
        sgd, momentum=0.0).run_id()


def test_the_input_size_enters_the_run_id_only_when_given_and_sets_the_stem():
    run = dataclasses.replace(QUICK, depth=18)
    assert "input_size" not in run.identity()
    assert dataclasses.replace(run, input_size=224).run_id() != run.run_id()
    assert run.stem_at(32) == "cifar" and run.stem_at(224) is None  # None: the family's, ImageNet's
    assert dataclasses.replace(run, stem="imagenet").stem_at(32) == "imagenet"
    assert dataclasses.replace(run, depth=20).stem_at(224) is None  # CIFAR nets have one stem
    validate(dataclasses.replace(run, input_size=224))
    validate(dataclasses.replace(run, input_size=8, batch_size=2))  # padding leaves every stage a map
