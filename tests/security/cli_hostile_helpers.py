"""Helpers of the hostile CLI tests (tests/security/test_hostile_cli*.py): strict JSON
parsing and a NumPy-only binary with its output and layer renamed (the ``small`` fixture of
tests/security/conftest.py uses it).
"""

from __future__ import annotations

import dataclasses
import json


from target_dlac.binary.container import write_program
from tests.container_helpers import make_program


def _strict_loads(text: str):
    """json.loads that refuses the NaN / Infinity / -Infinity tokens."""
    def bad(token):
        raise AssertionError(f"non-strict JSON token {token}")
    return json.loads(text, parse_constant=bad)


def _numpy_binary(path, out_name="y", layer_name="conv1", **meta):
    """The container tests' ternary-conv program, with its output and layer renamed."""
    p = make_program(**meta)
    p.tensors[1] = dataclasses.replace(p.tensors[1], name=out_name)
    p.meta["layers"][0]["name"] = layer_name
    write_program(path, p)
    return path
