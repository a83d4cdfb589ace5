"""The ``dlac`` command line.

    dlac compile MODEL [-o out.dlac] [options]   quantize, partition, generate the dLAC binary
    dlac run out.dlac --input x.npy [--check]    execute a binary in the ISA interpreter
    dlac inspect out.dlac [--json]               summarize and disassemble a binary
    dlac tune MODEL -o log.jsonl [options]       tune per-layer schedules (cost model)
    dlac train MODEL --data D -o out.pt2 [opts]  quantization-aware training (compiler.cli_train)
    dlac sweep MODEL --param N=V1,V2 -o S.jsonl  design-space sweep with the cost model (compiler.cli_sweep)
    dlac report INPUT... -o REPORT.html          HTML report with plots (compiler.cli_report)
    dlac eval out.dlac --data mnist|D.npz        accuracy in the interpreter on a dataset (compiler.cli_eval)
    dlac demo                                    the MNIST demo (see README)

``inspect`` and ``run`` (without ``--check``, on a binary with no host ops) import
neither TVM nor torch: a binary runs with NumPy alone.

Errors print one line and exit non-zero; ``--debug`` shows the traceback.  Output paths
are checked before any work (:func:`compiler.cli_args.check_outputs`: not an input, not a
directory, symlink or other non-regular file, in a writable directory that exists).  Text
that comes from a file (names of tensors, layers, ops; error messages quoting them) is
printed through :func:`compiler.cli_args.printable`, so control characters show as
``\\x..`` escapes.  Reports are strict JSON (:func:`compiler.cli_args.strict_json`:
non-finite floats written as the strings ``"nan"``, ``"inf"``, ``"-inf"``).

The commands live in :mod:`compiler.cli_model` (``compile``, ``tune``) and
:mod:`compiler.cli_binary` (``run``, ``inspect``), their shared options and error exit
in :mod:`compiler.cli_common`; this module is the group (``dlac``, the console entry
point ``compiler.cli:main``) and ``demo``.
"""

from __future__ import annotations

import click

from compiler.cli_args import parse_precisions  # noqa: F401 - re-exported
from compiler.cli_binary import CheckFailed, inspect_cmd, run_cmd  # noqa: F401 - CheckFailed re-exported
from compiler.cli_common import QUANT_CHOICES, QUANT_WEIGHTS, _fail  # noqa: F401 - re-exported
from compiler.cli_model import BinaryVerifyError, compile_cmd, tune_cmd  # noqa: F401 - re-exported
from compiler.cli_eval import eval_cmd
from compiler.cli_train import train_cmd
from compiler.cli_report import report_cmd
from compiler.cli_sweep import sweep_cmd
from target_dlac.core.errors import ConfigError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """dlac: compile PyTorch/ONNX models for the dLAC accelerator."""


for _cmd in (compile_cmd, tune_cmd, train_cmd, run_cmd, inspect_cmd, sweep_cmd, report_cmd,
             eval_cmd):
    main.add_command(_cmd)


@main.command("demo")
@click.option("--images", type=int, default=1000, show_default=True, help="MNIST test images to use.")
@click.option("--out-dir", default="demo_out", show_default=True,
              help="Where to write mnist.dlac and an example input.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def demo_cmd(images, out_dir, debug):
    """Compile the bundled MNIST CNN to a dLAC binary, run and check it in the interpreter."""
    try:
        if not 1 <= images <= 10000:
            raise ConfigError("--images must be between 1 and 10000")
        from compiler.demo import run_demo
        run_demo(images=images, out_dir=out_dir)
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001
        _fail(e, debug)


if __name__ == "__main__":
    main()
