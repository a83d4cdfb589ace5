"""The training loop of ``dlac train``: fine-tuning (the default) or training from
scratch, with the dLAC recipe and Apprentice distillation, for any ``torch.nn.Module``
(a :class:`compiler.train.qat.QatModel` or a plain float module).

Per epoch: ``model.refresh()`` (if the model has it: SWIS re-decomposition), one pass
over the training images in an order drawn from a ``torch.Generator`` seeded by
``(seed, epoch)``, ``model.calibrate(...)`` (if it has it) on the fixed calibration
images, the validation loss and accuracy, the plateau scheduler (learning rate divided
by ``plateau_factor`` when the validation loss has not improved for
``plateau_patience`` epochs) and an atomic checkpoint.  The model is also calibrated
once before the first epoch, so integer activations train with real exponents.

Loss: ``(1 - a) * CE(s, y) + a * T^2 * KL(softmax(t / T) || softmax(s / T))`` (Hinton)
with a teacher (``distill``), else ``CE(s, y)``; plus ``act_l1 * model.act_l1`` (the
activation L1 regularizer) when ``act_l1 > 0``.  Apprentice schemes: ``finetune``
(student pre-initialized from the float model, frozen float teacher), ``scratch``
(student re-initialized, frozen teacher), ``joint`` (the teacher trains at the same
time on its own cross-entropy, both in one optimizer; the soft targets are detached,
so the student's loss does not move the teacher).

Determinism: the global torch RNG is re-seeded from ``(seed, epoch)`` at every epoch,
``torch.use_deterministic_algorithms`` is on (warn-only) and the thread count fixed
while training, so two runs with the same arguments give equal state dicts and a run
resumed from a checkpoint equals an uninterrupted one.  Checkpoints
(:mod:`compiler.train.checkpoint`) are loaded with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np

from target_dlac.core.errors import ConfigError

DISTILL_SCHEMES = ("finetune", "scratch", "joint")
OPTIMIZERS = ("adam", "sgd")


@dataclass
class TrainOptions:
    epochs: int = 1
    lr: float = 1e-4                    # fine-tuning; training from scratch wants ~1e-3
    optimizer: str = "adam"             # adam | sgd (momentum 0.9)
    weight_decay: float = 0.0
    batch_size: int = 128
    seed: int = 0
    from_scratch: bool = False          # re-initialize the student (seeded) before training
    act_l1: float = 0.0                 # weight of model.act_l1
    plateau_patience: int = 1           # epochs without a better validation loss ...
    plateau_factor: float = 10.0        # ... before the learning rate is divided by this
    distill: str | None = None          # None | finetune | scratch | joint
    distill_alpha: float = 0.5          # weight of the soft (teacher) loss
    distill_temperature: float = 4.0
    calib_size: int = 512               # training images the activations are calibrated on
    eval_batch_size: int = 1000
    threads: int = 2

    def __post_init__(self):
        def bad(what, why):
            raise ConfigError(f"{what}: {why}")
        for name in ("epochs", "batch_size", "plateau_patience", "calib_size", "eval_batch_size", "threads"):
            v = getattr(self, name)
            low = 0 if name in ("epochs", "plateau_patience") else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                bad(name, f"{v!r} must be an integer >= {low}")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < 10):
            bad("lr", f"{self.lr!r} must be in (0, 10)")
        if self.optimizer not in OPTIMIZERS:
            bad("optimizer", f"{self.optimizer!r}; expected one of {OPTIMIZERS}")
        if self.distill is not None and self.distill not in DISTILL_SCHEMES:
            bad("distill", f"{self.distill!r}; expected None or one of {DISTILL_SCHEMES}")
        if not 0.0 <= self.distill_alpha <= 1.0:
            bad("distill_alpha", f"{self.distill_alpha!r} must be in [0, 1]")
        if not self.distill_temperature > 0:
            bad("distill_temperature", f"{self.distill_temperature!r} must be positive")
        if not self.plateau_factor > 1:
            bad("plateau_factor", f"{self.plateau_factor!r} must be > 1 (the LR is divided by it)")
        if not (self.act_l1 >= 0 and self.weight_decay >= 0):
            bad("act_l1/weight_decay", "must be >= 0")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    model: object                       # the trained student (calibrated, eval mode)
    teacher: object | None
    history: list = field(default_factory=list)   # one dict per epoch
    initial: dict | None = None         # validation loss / accuracy before training
    test: dict | None = None            # final test loss / accuracy (when the split has a test set)
    resumed_from: int | None = None     # the epoch the run resumed after


# ------------------------------------------------------------------ helpers

def reinitialize(module, seed: int) -> None:
    """Seeded re-initialization: every submodule's ``reset_parameters()`` (torch's default
    init) under ``torch.manual_seed(seed)``."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in module.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset):
                reset()


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + 12_345) % (2 ** 63)


@contextlib.contextmanager
def _deterministic(threads: int):
    import torch

    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)


def _batches(x: np.ndarray, size: int):
    import torch

    for i in range(0, len(x), size):
        yield torch.from_numpy(np.ascontiguousarray(x[i:i + size]))


def evaluate(model, x: np.ndarray, y: np.ndarray, batch_size: int = 1000) -> dict:
    """Mean cross-entropy and accuracy of ``model`` (eval mode, no gradients)."""
    import torch
    import torch.nn.functional as F

    if len(y) == 0:
        return {"loss": float("nan"), "acc": float("nan")}
    was = model.training
    model.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for xb, i in zip(_batches(x, batch_size), range(0, len(y), batch_size)):
            yb = torch.from_numpy(y[i:i + batch_size])
            out = model(xb)
            loss += float(F.cross_entropy(out, yb, reduction="sum"))
            correct += int((out.argmax(1) == yb).sum())
    model.train(was)
    return {"loss": loss / len(y), "acc": correct / len(y)}


def calibrate(model, images: np.ndarray, batch_size: int = 1000) -> None:
    """``model.calibrate(batches)`` on ``images`` (eval mode), if the model has it."""
    import torch

    cal = getattr(model, "calibrate", None)
    if not callable(cal):
        return
    was = model.training
    model.eval()
    with torch.no_grad():
        cal(list(_batches(images, batch_size)))
    model.train(was)


def distill_loss(s, t, y, alpha: float, temperature: float):
    """``(1 - alpha) * CE(s, y) + alpha * T^2 * KL(softmax(t/T) || softmax(s/T))``."""
    import torch.nn.functional as F

    ce = F.cross_entropy(s, y)
    if t is None or alpha == 0:
        return ce
    T = temperature
    kl = F.kl_div(F.log_softmax(s / T, dim=1), F.log_softmax(t.detach() / T, dim=1),
                  reduction="batchmean", log_target=True)
    return (1 - alpha) * ce + alpha * T * T * kl


def _optimizer(params, options: TrainOptions):
    import torch

    if options.optimizer == "sgd":
        return torch.optim.SGD(params, lr=options.lr, momentum=0.9, weight_decay=options.weight_decay)
    return torch.optim.Adam(params, lr=options.lr, weight_decay=options.weight_decay)


# ------------------------------------------------------------------ the loop

def train(student, teacher, split, options: TrainOptions | None = None, checkpoint: str | None = None,
          resume: bool = False, progress=None, meta: dict | None = None) -> TrainResult:
    """Train ``student`` on ``split`` (:class:`compiler.train.data.Split`) in place.

    ``teacher``: the float model for ``options.distill`` (None without distillation;
    frozen unless the scheme is ``joint``, where a copy of it trains too).
    ``checkpoint``: written atomically after every epoch; with ``resume`` the run
    continues after the epoch it holds (``meta``, e.g. the CLI's arguments, and the
    options other than ``epochs`` must match the checkpoint's).  ``progress(event,
    info)``: called with ``"batch"`` after every step (``epoch``, ``step``, ``steps``,
    ``loss``, ``acc``, ``seconds``), ``"epoch"`` after every epoch (its history row),
    ``"initial"`` with the validation loss / accuracy before training, and
    ``"calibrate"`` / ``"evaluate"`` before those phases."""
    import torch

    from compiler.train.checkpoint import load_checkpoint, save_checkpoint

    options = options or TrainOptions()
    say = progress or (lambda event, info: None)
    if options.distill and teacher is None:
        raise ConfigError(f"distillation ({options.distill}) needs a teacher model")
    if not options.distill:
        teacher = None
    if resume and not checkpoint:
        raise ConfigError("resume needs a checkpoint path")
    joint = options.distill == "joint"
    if joint:
        teacher = copy.deepcopy(teacher)
    if teacher is not None:
        teacher.train(joint)            # a frozen teacher runs in eval mode under no_grad
    if len(split.y_train) == 0:
        raise ConfigError("no training images")
    calib_x = np.ascontiguousarray(split.x_train[:options.calib_size])
    with _deterministic(options.threads):
        torch.manual_seed(_epoch_seed(options.seed, -1))
        if options.from_scratch and not resume:
            reinitialize(student, options.seed)
        params = [p for p in student.parameters() if p.requires_grad]
        if joint:
            params += [p for p in teacher.parameters() if p.requires_grad]
        if not params:
            raise ConfigError("the model has no trainable parameters")
        opt = _optimizer(params, options)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=1.0 / options.plateau_factor, patience=options.plateau_patience,
            eps=0.0)
        result = TrainResult(student, teacher)
        start = 0
        if resume:
            state = load_checkpoint(checkpoint, student, teacher, opt, sched, options, meta)
            start, result.history = state["epoch"], state["history"]
            result.initial, result.resumed_from = state.get("initial"), start
        else:
            if callable(getattr(student, "refresh", None)):
                student.refresh()
            say("calibrate", {"epoch": 0, "images": len(calib_x)})
            calibrate(student, calib_x, options.eval_batch_size)
            say("evaluate", {"epoch": 0})
            result.initial = evaluate(student, split.x_val, split.y_val, options.eval_batch_size)
            say("initial", result.initial)
        for epoch in range(start + 1, options.epochs + 1):
            row = _epoch(student, teacher, split, options, opt, epoch, calib_x, say)
            val_loss = row["val_loss"] if row["val_loss"] == row["val_loss"] else row["train_loss"]
            sched.step(val_loss)
            row["lr_next"] = opt.param_groups[0]["lr"]
            result.history.append(row)
            if checkpoint:
                save_checkpoint(checkpoint, epoch, student, teacher, opt, sched, options, meta,
                                result.history, result.initial)
            say("epoch", row)
        student.eval()
        if split.y_test is not None:
            say("evaluate", {"epoch": "test"})
            result.test = evaluate(student, split.x_test, split.y_test, options.eval_batch_size)
    return result


def _epoch(student, teacher, split, options, opt, epoch, calib_x, say) -> dict:
    import torch
    import torch.nn.functional as F

    t0 = time.perf_counter()
    torch.manual_seed(_epoch_seed(options.seed, epoch))
    if callable(getattr(student, "refresh", None)):
        student.refresh()
    gen = torch.Generator().manual_seed(_epoch_seed(options.seed, epoch))
    n = len(split.y_train)
    order = torch.randperm(n, generator=gen).numpy()
    x_all, y_all = split.x_train, split.y_train
    student.train()
    joint = options.distill == "joint"
    steps = (n + options.batch_size - 1) // options.batch_size
    total_loss, correct, seen = 0.0, 0, 0
    lr = opt.param_groups[0]["lr"]
    for step in range(steps):
        idx = order[step * options.batch_size:(step + 1) * options.batch_size]
        xb = torch.from_numpy(np.ascontiguousarray(x_all[idx]))
        yb = torch.from_numpy(np.ascontiguousarray(y_all[idx]))
        out = student(xb)
        t_out = None
        if teacher is not None:
            if joint:
                t_out = teacher(xb)
            else:
                with torch.no_grad():
                    t_out = teacher(xb)
        loss = distill_loss(out, t_out, yb, options.distill_alpha if teacher is not None else 0.0,
                            options.distill_temperature)
        if joint:
            loss = loss + F.cross_entropy(t_out, yb)
        if options.act_l1 > 0:
            reg = getattr(student, "act_l1", None)
            if reg is None:
                raise ConfigError("act_l1 > 0 needs a model that sets .act_l1 in forward (a QatModel)")
            loss = loss + options.act_l1 * reg
        if not torch.isfinite(loss.detach()):
            raise ConfigError(f"epoch {epoch}, step {step + 1}: the loss is {float(loss.detach())} (lower the "
                              "learning rate)")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total_loss += float(loss.detach()) * len(idx)
        correct += int((out.argmax(1) == yb).sum())
        seen += len(idx)
        say("batch", {"epoch": epoch, "step": step + 1, "steps": steps, "loss": total_loss / seen,
                      "acc": correct / seen, "seconds": time.perf_counter() - t0, "lr": lr})
    train_s = time.perf_counter() - t0
    say("calibrate", {"epoch": epoch, "images": len(calib_x)})
    calibrate(student, calib_x, options.eval_batch_size)
    say("evaluate", {"epoch": epoch})
    val = evaluate(student, split.x_val, split.y_val, options.eval_batch_size)
    row = {"epoch": epoch, "train_loss": total_loss / seen, "train_acc": correct / seen,
           "val_loss": val["loss"], "val_acc": val["acc"], "lr": lr,
           "train_seconds": train_s, "seconds": time.perf_counter() - t0}
    if joint:
        row["teacher_val_acc"] = evaluate(teacher, split.x_val, split.y_val, options.eval_batch_size)["acc"]
        teacher.train()
    return row
