"""optgen.create_optimizer / optgen.available: weight-decay groups as timm builds them, and
training through a plain loop and through PyTorch Lightning."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import optgen
from optgen.workbench.factory import parse_spec_arg

SPECS = Path(__file__).resolve().parent.parent / "specs"


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.norm = nn.LayerNorm(16)
        self.bn = nn.BatchNorm1d(16)
        self.head = nn.Linear(16, 3)
        self.scale = nn.Parameter(torch.ones(16))

    def forward(self, x):
        return self.head(self.bn(self.norm(torch.tanh(self.embed(x))) * self.scale))


def _data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, :3].argmax(dim=1) + (x[:, 3] > 1).long()) % 3
    return x, y


def test_available_is_the_catalog():
    names = optgen.available()
    assert "adamw" in names and "adan" in names
    assert names == sorted(p.stem for p in SPECS.glob("*.yaml"))


def test_weight_decay_groups_follow_timm():
    model = Net()
    opt = optgen.create_optimizer(model, "adamw", lr=3e-3, weight_decay=0.05)
    assert type(opt).__name__ == "AdamW"
    names = {id(p): n for n, p in model.named_parameters()}
    by_decay = {g["weight_decay"]: sorted(names[id(p)] for p in g["params"]) for g in opt.param_groups}
    assert by_decay[0.05] == ["embed.weight", "head.weight"]
    assert by_decay[0.0] == sorted(
        ["embed.bias", "norm.weight", "norm.bias", "bn.weight", "bn.bias", "head.bias", "scale"]
    )
    assert all(g["lr"] == 3e-3 for g in opt.param_groups)


def test_no_split_without_decay_and_model_exclusions():
    model = Net()
    assert len(optgen.create_optimizer(model, "adam", lr=1e-3).param_groups) == 1  # adam's default decay is 0
    model.no_weight_decay = lambda: {"head.weight"}  # timm's hook
    opt = optgen.create_optimizer(model, "adamw", weight_decay=0.1, no_weight_decay=())
    decayed = {
        n
        for n, p in model.named_parameters()
        for g in opt.param_groups
        if g["weight_decay"]
        for q in g["params"]
        if q is p
    }
    assert decayed == {"embed.weight"}


def test_overrides_and_hyperparameters():
    model = Net()
    opt = optgen.create_optimizer(
        model, "adan", lr=1e-3, weight_decay=0.02, betas=(0.9, 0.9, 0.99), overrides={"head.*": {"lr": 1e-2}}
    )
    head = {id(p) for p in model.head.parameters()}
    for group in opt.param_groups:
        in_head = {id(p) in head for p in group["params"]}
        assert len(in_head) == 1
        assert group["lr"] == (1e-2 if in_head.pop() else 1e-3)
        assert group["betas"] == (0.9, 0.9, 0.99)
    with pytest.raises(TypeError, match="no hyperparameter 'momentum'"):
        optgen.create_optimizer(model, "adam", momentum=0.9)
    with pytest.raises(TypeError, match="need parameter names"):
        optgen.create_optimizer(model.parameters(), "adam", overrides={"*": {"lr": 1.0}})


def test_spec_path_compiles():
    opt = optgen.create_optimizer(Net(), SPECS / "lion.yaml", lr=1e-4)
    assert type(opt).__name__ == "Lion" and "optgen_compiled" in type(opt).__module__


def test_parse_spec_arg():
    assert parse_spec_arg("adam") == ("adam", {})
    assert parse_spec_arg("adam:lr=1e-3,betas=(0.8,0.9),amsgrad=true") == (
        "adam",
        {"lr": 1e-3, "betas": (0.8, 0.9), "amsgrad": True},
    )
    with pytest.raises(optgen.SpecError):
        parse_spec_arg("adam:lr=__import__('os')")


def _loss(model, x, y):
    with torch.no_grad():
        return nn.functional.cross_entropy(model(x), y).item()


@pytest.mark.parametrize("name", ["adamw", "lion"])
def test_plain_loop_trains(name):
    torch.manual_seed(0)
    model, (x, y) = Net(), _data()
    opt = optgen.create_optimizer(model, name, lr=1e-2 if name == "adamw" else 3e-3, weight_decay=0.01)
    before = _loss(model, x, y)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert _loss(model, x, y) < 0.6 * before


def test_lightning_trains():
    import pytorch_lightning as pl  # in the test extras

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = Net()

        def training_step(self, batch, _):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return optgen.create_optimizer(self, "adamw", lr=1e-2, weight_decay=0.01)

    torch.manual_seed(0)
    x, y = _data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)
    module = Module()
    before = _loss(module.net.eval(), x, y)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    trainer = pl.Trainer(
        max_epochs=15,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, loader)
    assert type(trainer.optimizers[0]).__name__ == "AdamW"
    assert {g["weight_decay"] for g in trainer.optimizers[0].param_groups} == {0.0, 0.01}
    assert _loss(module.net.eval(), x, y) < 0.6 * before
