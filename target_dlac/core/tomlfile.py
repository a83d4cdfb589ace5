"""Reading a TOML file (machine files, precision files) with a one-line error."""

from __future__ import annotations

from target_dlac.core.errors import ConfigError


def read_toml(path: str, what: str) -> dict:
    """The table of a TOML file; a missing or malformed file is a one-line ConfigError."""
    import tomllib

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path!r} not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{what} {path!r}: {e}") from None
