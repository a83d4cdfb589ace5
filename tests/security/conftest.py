"""Fixtures of the hostile-input tests."""

import pytest


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A legitimate .pt2 of :class:`tests.security.pt2_builders.Net` and the net."""
    torch = pytest.importorskip("torch")
    from tests.security.pt2_builders import Net

    torch.manual_seed(0)
    net = Net().eval()
    path = tmp_path_factory.mktemp("pt2") / "base.pt2"
    torch.export.save(torch.export.export(net, (torch.randn(1, 3, 8, 8),)), str(path))
    return path, net


@pytest.fixture
def small(tmp_path):
    """A NumPy-only binary and its input."""
    import numpy as np

    from tests.container_helpers import X
    from tests.security.cli_hostile_helpers import _numpy_binary

    b = _numpy_binary(tmp_path / "p.dlac")
    np.save(tmp_path / "x.npy", X)
    return {"bin": b, "x": tmp_path / "x.npy", "dir": tmp_path}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny CLI factory net, compiled (a CompileResult)."""
    from compiler.pipeline import compile_model
    from tests.cli_helpers import FACTORY

    path = tmp_path_factory.mktemp("fac") / "fac.py"
    path.write_text(FACTORY)
    return compile_model(f"{path}:make")
