"""The training loop (compiler.train.loop): the loss goes down, runs are reproducible, a
resumed run equals an uninterrupted one bit for bit, checkpoints are checked, the
distillation schemes use their soft loss, the plateau scheduler drops the learning rate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compiler.config import QuantConfig
from compiler.train.data import Split
from compiler.train.loop import TrainOptions, distill_loss, reinitialize, train
from target_dlac.core.errors import ConfigError, DataError


def _split(n=192, n_val=48, seed=0) -> Split:
    """A learnable 4-class problem on 1x8x8 images: the label is the brightest quadrant."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n + n_val, 1, 8, 8)).astype(np.float32)
    quads = x.reshape(len(x), 2, 4, 2, 4).sum(axis=(2, 4)).reshape(len(x), 4)
    y = quads.argmax(1).astype(np.int64)
    return Split(x[:n], y[:n], x[n:], y[n:], x[n:], y[n:], "synthetic", "none", 4)


class Net(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(width * 16, 4)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv2(torch.relu(self.conv1(x)))))
        return self.fc(torch.flatten(x, 1))


def _float(seed=1) -> nn.Module:
    torch.manual_seed(seed)
    return Net().eval()


def _qat(model=None, activations="int8", sparsity="dynamic"):
    from compiler.train.qat import QatSpec, prepare

    spec = QatSpec(quant=QuantConfig.all_ternary(), activations=activations, sparsity=sparsity)
    return prepare(model if model is not None else _float(), torch.zeros(1, 1, 8, 8), spec)


def _opts(**kw) -> TrainOptions:
    base = dict(epochs=1, lr=1e-2, batch_size=32, calib_size=64, eval_batch_size=128)
    base.update(kw)
    return TrainOptions(**base)


def _equal_states(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("make", [_float, _qat], ids=["float", "qat-int8"])
def test_a_few_steps_reduce_the_loss(make):
    split = _split()
    r = train(make(), None, split, _opts(epochs=3))
    losses = [h["train_loss"] for h in r.history]
    assert all(np.isfinite(losses))
    assert losses[2] < losses[1] < losses[0], losses
    assert r.history[-1]["val_loss"] < r.initial["loss"]
    assert r.test is not None and 0 <= r.test["acc"] <= 1
    assert {"train_acc", "val_acc", "lr", "seconds"} <= set(r.history[0])


def test_two_runs_with_the_same_arguments_give_the_same_model():
    split = _split()
    a = train(_qat(), None, split, _opts(epochs=2)).model
    b = train(_qat(), None, split, _opts(epochs=2)).model
    assert _equal_states(a, b)
    c = train(_qat(), None, split, _opts(epochs=2, seed=5)).model
    assert not _equal_states(a, c)          # the seed matters (the order of the batches)


def test_resumed_run_equals_an_uninterrupted_one(tmp_path):
    split = _split()
    whole = train(_qat(), None, split, _opts(epochs=2), checkpoint=str(tmp_path / "a.ckpt"))
    ck = str(tmp_path / "b.ckpt")
    first = train(_qat(), None, split, _opts(epochs=1), checkpoint=ck)
    assert len(first.history) == 1
    resumed = train(_qat(), None, split, _opts(epochs=2), checkpoint=ck, resume=True)
    assert resumed.resumed_from == 1
    assert _equal_states(whole.model, resumed.model)
    strip = [{k: v for k, v in h.items() if "seconds" not in k} for h in whole.history]
    assert strip == [{k: v for k, v in h.items() if "seconds" not in k} for h in resumed.history]


@pytest.mark.slow
def test_interrupted_in_the_middle_of_an_epoch_then_resumed(tmp_path):
    split = _split()
    whole = train(_qat(), None, split, _opts(epochs=2))
    ck = str(tmp_path / "c.ckpt")

    def stop(event, info):
        if event == "batch" and info["epoch"] == 2 and info["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_qat(), None, split, _opts(epochs=2), checkpoint=ck, progress=stop)
    resumed = train(_qat(), None, split, _opts(epochs=2), checkpoint=ck, resume=True)
    assert resumed.resumed_from == 1
    assert _equal_states(whole.model, resumed.model)


def test_corrupt_or_mismatched_checkpoint_is_a_one_line_error(tmp_path):
    split = _split(n=64)
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="bad.ckpt.*corrupt") as e:
        train(_float(), None, split, _opts(), checkpoint=str(bad), resume=True)
    assert "\n" not in str(e.value)
    ck = str(tmp_path / "ok.ckpt")
    train(_float(), None, split, _opts(), checkpoint=ck)
    truncated = tmp_path / "trunc.ckpt"
    truncated.write_bytes(open(ck, "rb").read()[:5000])
    with pytest.raises(DataError, match="trunc.ckpt"):
        train(_float(), None, split, _opts(epochs=2), checkpoint=str(truncated), resume=True)
    with pytest.raises(DataError, match="ok.ckpt.*lr="):
        train(_float(), None, split, _opts(epochs=2, lr=1e-3), checkpoint=ck, resume=True)
    with pytest.raises(DataError, match="ok.ckpt.*does not fit"):
        train(Net(width=4), None, split, _opts(epochs=2), checkpoint=ck, resume=True)
    with pytest.raises(DataError, match="ok.ckpt.*model='b'"):
        train(_float(), None, split, _opts(epochs=2), checkpoint=ck, resume=True, meta={"model": "b"})
    with pytest.raises(DataError, match="missing.ckpt.*not found"):
        train(_float(), None, split, _opts(), checkpoint=str(tmp_path / "missing.ckpt"), resume=True)


def test_checkpoints_load_with_weights_only(tmp_path):
    ck = str(tmp_path / "w.ckpt")
    train(_qat(), None, _split(n=64), _opts(), checkpoint=ck)
    state = torch.load(ck, weights_only=True)
    assert state["epoch"] == 1 and state["format"] == "dlac-train-checkpoint"


def test_distillation_uses_the_soft_loss():
    s, t, y = torch.randn(8, 4), torch.randn(8, 4), torch.randint(0, 4, (8,))
    assert torch.equal(distill_loss(s, t, y, 0.0, 4.0), torch.nn.functional.cross_entropy(s, y))
    assert float(distill_loss(s, s, y, 1.0, 4.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(distill_loss(s, t, y, 1.0, 4.0)) > 0
    split = _split()
    hard = train(_qat(), _float(), split, _opts(distill="finetune", distill_alpha=0.0)).model
    soft = train(_qat(), _float(), split, _opts(distill="finetune", distill_alpha=1.0)).model
    plain = train(_qat(), None, split, _opts()).model
    assert _equal_states(hard, plain)       # alpha 0: the cross-entropy alone
    assert not _equal_states(hard, soft)


def test_distillation_schemes_run():
    split = _split()
    teacher = _float()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    scratch = train(_qat(), teacher, split, _opts(distill="scratch", from_scratch=True, epochs=2))
    assert scratch.history[-1]["train_loss"] < scratch.history[0]["train_loss"]
    joint = train(_qat(), teacher, split, _opts(distill="joint"))
    assert "teacher_val_acc" in joint.history[0]
    moved = joint.teacher.state_dict()
    assert any(not torch.equal(moved[k], before[k]) for k in before)        # the teacher trained
    assert all(torch.equal(teacher.state_dict()[k], before[k]) for k in before)   # on a copy
    with pytest.raises(ConfigError, match="teacher"):
        train(_qat(), None, split, _opts(distill="finetune"))


def test_plateau_divides_the_learning_rate():
    r = train(_float(), None, _split(), _opts(epochs=3, lr=1e-9, plateau_patience=0, plateau_factor=10))
    assert r.history[0]["lr"] == 1e-9
    assert r.history[1]["lr_next"] == pytest.approx(1e-10)
    assert r.history[2]["lr"] == pytest.approx(1e-10)


def test_act_l1_regularizer():
    split = _split()
    base = train(_qat(), None, split, _opts()).model
    reg = train(_qat(), None, split, _opts(act_l1=0.1)).model
    assert not _equal_states(base, reg)
    with pytest.raises(ConfigError, match="act_l1"):
        train(_float(), None, split, _opts(act_l1=0.1))


def test_from_scratch_reinitializes_with_a_seed():
    a, b, c = _float(), _float(), _float()
    reinitialize(a, 3)
    reinitialize(b, 3)
    assert _equal_states(a, b) and not _equal_states(a, c)


@pytest.mark.parametrize("kw", [dict(epochs=-1), dict(lr=0.0), dict(distill="both"), dict(distill_alpha=2.0),
                                dict(plateau_factor=1.0), dict(optimizer="lbfgs"), dict(batch_size=0)])
def test_bad_options(kw):
    with pytest.raises(ConfigError):
        TrainOptions(**kw)
