"""SWIS group encoding written straight from the definition (papers.md, SWIS): a test
oracle for the quantizer's snapped values, independent of the packed block format of
``target_dlac.isa.blocks`` (which the interpreter reads)."""

from __future__ import annotations

import numpy as np


def encode_group(values: np.ndarray, shifts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sign and mask bits of representable values.

    ``values`` ``[..., M]`` signed ints, ``shifts`` ``[..., S]`` (broadcastable
    leading dims).  Returns ``(signs [..., M] bool, masks [..., M, S] bool)``:
    ``signs`` is True for a negative value (False for 0); ``masks[i, j]`` is bit
    ``shifts[j]`` of ``|values[i]|``.  Raises ``ValueError`` if a magnitude has a
    bit outside the shifts (not representable).
    """
    v = np.asarray(values, dtype=np.int64)
    sh = np.asarray(shifts, dtype=np.int64)
    mag = np.abs(v)
    masks = ((mag[..., :, None] >> sh[..., None, :]) & 1).astype(bool)
    if not np.array_equal(_sum_bits(masks, sh), mag):
        raise ValueError("values not representable with these shifts")
    return v < 0, masks


def _sum_bits(masks, sh):
    return (masks.astype(np.int64) << sh[..., None, :]).sum(axis=-1)


def decode_group(signs: np.ndarray, masks: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """``w_i = sign_i * sum_j m_i[j] * 2^(s_j)`` (int16), vectorized like ``encode_group``."""
    sh = np.asarray(shifts, dtype=np.int64)
    mag = _sum_bits(np.asarray(masks, bool), sh)
    return np.where(np.asarray(signs, bool), -mag, mag).astype(np.int16)
