"""The encoding's limits and the weight formats' facts are derived from the ISA tables."""

from __future__ import annotations

import numpy as np
import pytest

from target_dlac.core.plan import WeightFormat, format_of
from target_dlac.isa import encoding as E
from target_dlac.isa.blocks import SWIS_M, pack_swis, swis_block_bytes, swis_groups
from target_dlac.isa.formats import FACTS, PRECISION_MAX, SWIS_GROUP, WFMT_BYTES, facts


def test_field_max_follows_formats():
    for op, (_, _, fields) in E.FORMATS.items():
        for name, bits in fields:
            assert E.field_bits(op, name) == bits
            assert E.field_max(op, name) == (1 << bits) - 1
    with pytest.raises(KeyError):
        E.field_max("MAC", "nonexistent")


def test_named_limits_are_the_fields():
    assert (E.MAX_KERNEL, E.MAX_CONV_STRIDE, E.MAX_PAD) == (15, 15, 15)
    assert (E.MAX_DIM, E.MAX_POOL_KERNEL, E.MAX_POOL_STRIDE, E.MAX_PIXELS) == (4095, 4095, 255, 65535)


def test_every_weight_format_has_its_facts():
    assert set(FACTS) == set(WeightFormat)
    for fmt, f in FACTS.items():
        assert f.fmt is fmt and f.opcode in ("MAC", "TACC", "SACC")
        if f.opcode == "MAC":
            assert E.WFMTS[f.wfmt] == fmt.value and f.bytes_per_weight == np.dtype(f.dtype).itemsize
        else:
            assert f.wfmt == 0 and f.bytes_per_weight is None
        if f.integer:
            assert f.max_magnitude <= np.iinfo(f.dtype).max
    assert WFMT_BYTES == {0: 4, 1: 1}
    assert facts("swis").max_magnitude == PRECISION_MAX["swis"] == 255
    assert SWIS_M == SWIS_GROUP == 4


def test_format_of_precisions():
    assert format_of("fp32") is WeightFormat.FLOAT32
    assert format_of("ternary") is WeightFormat.TERNARY
    assert format_of("int4") is format_of("int8") is WeightFormat.INT8
    assert format_of("swis") is WeightFormat.SWIS
    assert format_of("swis", depthwise=True) is WeightFormat.INT8    # no input-channel groups


def test_swis_block_groups_follow_the_group_size():
    rng = np.random.default_rng(0)
    c = 2 * SWIS_GROUP + 1
    values = rng.choice([-3, 0, 1, 2, 3], size=(2, c, 1, 1)).astype(np.int64)
    groups = swis_groups(c, 1, 1)
    assert groups == 3
    shifts = np.tile(np.array([0, 1], np.uint8), (2, 1, groups, 1))
    counts = np.array([2, 2])
    assert len(pack_swis(values, shifts, counts, np.arange(2))) == swis_block_bytes(counts, groups)
