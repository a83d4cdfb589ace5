"""Per-layer precisions from one file: weights and activation types by layer-name pattern."""

from __future__ import annotations

import pytest

from compiler.cli import parse_precisions
from target_dlac.core.errors import ConfigError


def test_precision_file_tables(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text('[precision]\n"conv_layers.3" = "int4"\n"fc_*" = "swis"\n'
                 '[activations]\n"conv_layers.*" = "fp16"\n')
    acts: dict = {}
    weights = parse_precisions([str(f), "conv_layers.6=int8"], acts)
    assert weights == {"conv_layers.3": "int4", "fc_*": "swis", "conv_layers.6": "int8"}
    assert acts == {"conv_layers.*": "fp16"}


def test_precision_file_top_level_pairs(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text('"layer4.*" = "fp32"\n')
    assert parse_precisions([str(f)]) == {"layer4.*": "fp32"}


@pytest.mark.parametrize("text, needle", [
    ('"conv" = 3\n', "'conv'"),
    ('[activations]\n"conv" = 16\n', "activations"),
    ('"conv = \n', "precision file"),
])
def test_bad_precision_files(tmp_path, text, needle):
    f = tmp_path / "p.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        parse_precisions([str(f)])


def test_missing_precision_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        parse_precisions([str(tmp_path / "absent.toml")])


def test_precision_file_drives_the_compile(tmp_path):
    torch = pytest.importorskip("torch")
    from compiler import QuantConfig, compile_model
    from compiler.datasets import mnist_cnn

    f = tmp_path / "p.toml"
    f.write_text('"conv_layers.3" = "int4"\n"fc_layers.0" = "swis"\n')
    r = compile_model(mnist_cnn(), (torch.zeros(1, 1, 28, 28),),
                      config=QuantConfig(overrides=parse_precisions([str(f)])))
    assert [(l.name, l.precision) for l in r.layers] == [
        ("conv_layers.0", "fp32"), ("conv_layers.3", "int4"), ("conv_layers.6", "ternary"),
        ("fc_layers.0", "swis"), ("fc_layers.2", "fp32")]
