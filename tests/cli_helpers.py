"""Driving ``dlac`` in-process for the CLI tests: click's CliRunner, the single error line
of a failed command, and a small factory module to compile.  A plain module: no tests."""

from __future__ import annotations

import textwrap

FACTORY = textwrap.dedent('''
    import torch
    from torch import nn


    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
            self.pool = nn.MaxPool2d(2)
            self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
            self.conv3 = nn.Conv2d(32, 32, 3, padding=1)
            self.gap = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            x = self.pool(torch.relu(self.conv1(x)))
            x = torch.relu(self.conv2(x))
            x = torch.relu(self.conv3(x))
            return self.fc(torch.flatten(self.gap(x), 1))


    def make():
        torch.manual_seed(0)
        return Tiny().eval(), (torch.randn(1, 1, 16, 16),)
''')
"""A factory module (``FILE.py:make``): a tiny conv net on 1x1x16x16 inputs."""


def cli(args):
    """``dlac ARGS`` in-process (arguments turned into strings)."""
    from click.testing import CliRunner

    from compiler.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def error_line(result, exit_code=None, stdout_empty=True) -> str:
    """The single 'dlac: error:' line of a failed command (no traceback)."""
    assert result.exit_code != 0, result.output
    if exit_code is not None:
        assert result.exit_code == exit_code, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip() and not ln.startswith("  stage ")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dlac: error:"), lines[0]
    if stdout_empty:
        assert result.stdout == ""
    return lines[0]


def ok(result):
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def script_env() -> dict:
    """Environment for a test's ``python script.py`` subprocess: it imports dlac and the
    test helpers as this process does."""
    import os
    import sys

    return dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd()] + sys.path))
