"""The layer table's typed record: what the codegen writes is what validation, the report
and ``inspect`` read back, and a malformed entry is an error naming the entry and field."""

from __future__ import annotations

import json

import pytest

from target_dlac.binary.layer_meta import LayerMeta, LayerMetaError, layer_table

CONV = LayerMeta("layer1.0.conv1", "lv3", "conv2d", "ternary", 10, 42, 5000, 800,
                 schedule={"f_tile": 32, "c_tile": 16, "h_tile": 4, "w_tile": 8, "order": "fchw",
                           "double_buffer": True, "pe_order": "sorted", "pxshift": 0},
                 shape={"n": 1, "c": 16, "pads": (1, 1, 1, 1), "ternary": True, "dtype": "float32"})


def test_round_trip_through_json():
    d = json.loads(json.dumps(CONV.to_dict()))
    back = LayerMeta.from_dict(d, 42)
    assert back.to_dict() == d
    assert (back.name, back.pc_start, back.pc_end, back.schedule["f_tile"]) == ("layer1.0.conv1", 10, 42, 32)


def test_optional_fields_only_when_set():
    host = LayerMeta("host:x", "x", "host", "fp32", 0, 2)
    assert "schedule" not in host.to_dict() and "shape" not in host.to_dict()
    assert LayerMeta.from_dict({"name": "a", "op": "add", "pc_start": 0, "pc_end": 0}).precision == "-"


@pytest.mark.parametrize("change, field", [
    ({"pc_start": -1}, "pc_start"),
    ({"pc_end": True}, "pc_end"),
    ({"name": 7}, "name"),
    ({"min_dram_bytes": 1.5}, "min_dram_bytes"),
    ({"schedule": [1, 2]}, "schedule"),
    ({"shape": {"pads": [[1]]}}, "shape"),
    ({"pc_start": 50}, "ends before it starts"),
    ({"pc_end": 43}, "ends after the 42 instructions"),
])
def test_malformed_entries_name_the_field(change, field):
    d = CONV.to_dict() | change
    with pytest.raises(LayerMetaError, match=field):
        LayerMeta.from_dict(d, 42)
    with pytest.raises(LayerMetaError, match=r"^layer 1( \('layer1.0.conv1'\))?: "):
        layer_table({"layers": [CONV.to_dict(), d]}, 42)


def test_table_must_be_a_list():
    with pytest.raises(LayerMetaError, match="not a list"):
        layer_table({"layers": {"a": 1}})
    assert layer_table({}) == []
