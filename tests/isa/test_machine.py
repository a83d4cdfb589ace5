"""The machine model: one dataclass, loadable from TOML, hashed into every binary."""

from __future__ import annotations

import pytest

from target_dlac.core.errors import ConfigError
from target_dlac.isa.machine import Machine


def test_documented_default_file_is_the_default_machine():
    """docs/machine-default.toml must list every parameter, with the dataclass default."""
    import tomllib

    with open("docs/machine-default.toml", "rb") as f:
        listed = tomllib.load(f)["machine"]
    assert set(listed) == set(Machine().to_dict())
    assert Machine.from_toml("docs/machine-default.toml") == Machine()


def test_derived_sizes_follow_parameters():
    m = Machine(pe_rows=8, pe_cols=4, obuf_bytes_per_pe=256, wgt_buf_kib=64)
    assert m.pes == 32 and m.acc_bytes == 32 * 256 and m.wgt_bytes == 64 * 1024
    assert m.addr_bits("WGT") == 16 and m.macs_per_cycle == 32
    assert m.lanes_for("float16") == 2 * m.lanes_for("float32")
    assert m.seconds(500) == pytest.approx(1e-6)


def test_hash_changes_with_any_parameter():
    base = Machine().hash()
    assert Machine().hash() == base
    assert Machine(dma_latency=101).hash() != base


@pytest.mark.parametrize("text, needle", [
    ("[machine]\npe_colz = 4\n", "pe_colz"),
    ("[machine]\npe_cols = 0\n", "pe_cols"),
    ("[machine]\npe_cols = 2.5\n", "pe_cols"),
    ("[machine]\nlanes = true\n", "lanes"),
    ("[machine]\nwgt_buf_kib = 100000\n", "wgt_bytes"),
    ("[machine\n", "machine file"),
])
def test_bad_machine_files_are_refused(tmp_path, text, needle):
    path = tmp_path / "m.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        Machine.from_toml(str(path))


def test_missing_machine_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        Machine.from_toml(str(tmp_path / "absent.toml"))
