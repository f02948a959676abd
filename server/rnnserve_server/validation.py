"""Checks of client input that need no session state (ids, tensor shapes, values).

Everything here runs before a request reaches the batcher, so a rejected request never touches
a session. Messages name the session and model and say what was expected and what came.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import numpy.typing as npt

from rnnserve_server.config import LimitSettings
from rnnserve_server.errors import InvalidArgument
from rnnserve_server.types import FloatArray

MAX_ID_LEN = 128
_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:@/-")
ID_RE = re.compile(r"[A-Za-z0-9._:@/\-]{1,128}")


def session_id_problem(session_id: str) -> str | None:
    """Why `session_id` is malformed, or None."""
    if not session_id:
        return "session id is empty"
    if len(session_id) > MAX_ID_LEN:
        return f"session id is {len(session_id)} characters long; at most {MAX_ID_LEN} allowed"
    if ID_RE.fullmatch(session_id) is None:
        bad = sorted({ch for ch in session_id if ch not in _ID_CHARS})
        return (
            f"session id {session_id!r} contains {''.join(bad)!r}; allowed are letters, digits "
            "and . _ : @ / -"
        )
    return None


def check_session_id(session_id: str) -> None:
    problem = session_id_problem(session_id)
    if problem is not None:
        raise InvalidArgument(problem)


def bad_session_ids(ids: list[str]) -> dict[int, str]:
    """Malformed ids of a frame by position (fast path, all C-level: every id is fine)."""
    if (
        ids
        and min(map(len, ids)) >= 1
        and max(map(len, ids)) <= MAX_ID_LEN
        and set("".join(ids)) <= _ID_CHARS
    ):
        return {}
    out: dict[int, str] = {}
    for i, s in enumerate(ids):
        problem = session_id_problem(s)
        if problem is not None:
            out[i] = problem
    return out


def as_float32(x: Any, what: str) -> FloatArray:
    if not isinstance(x, np.ndarray):
        raise InvalidArgument(f"{what} must be a numpy array, got {type(x).__name__}")
    if x.dtype != np.float32:
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise InvalidArgument(f"{what} must hold float32 numbers, got dtype {x.dtype}")
        x = x.astype(np.float32)
    out: FloatArray = x
    return out


def check_chunk(
    raw: Any, features: int, limits: LimitSettings, where: str, *, check_finite: bool = True
) -> FloatArray:
    """A streaming chunk [T, F]: returns it as float32. `where` names session and model.
    check_finite=False leaves NaN/Inf to the caller (the batcher checks whole batches)."""
    x = as_float32(raw, "input")
    if x.ndim != 2:
        raise InvalidArgument(
            f"{where}: input must have shape [T, {features}] (steps, features), "
            f"got shape {list(x.shape)}"
        )
    T, F = x.shape
    if features != F:
        raise InvalidArgument(f"{where}: the model expects {features} input features, got {F}")
    if T == 0:
        raise InvalidArgument(f"{where}: the chunk is empty (T=0); send at least one step")
    if limits.max_chunk_steps < T:
        raise InvalidArgument(
            f"{where}: the chunk has {T} steps; at most {limits.max_chunk_steps} are allowed "
            "per chunk (split it)"
        )
    if check_finite and not limits.allow_non_finite:
        _finite(x, where)
    return x


def rows_finite(a: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    """Per row (first axis): no NaN or Inf in it (integer arrays always pass)."""
    if a.dtype.kind != "f":
        return np.ones(a.shape[0], np.bool_)
    finite: npt.NDArray[np.bool_] = np.isfinite(a.reshape(a.shape[0], -1)).all(axis=1)
    return finite


def check_finite(x: FloatArray, where: str) -> None:
    """INVALID_ARGUMENT when x holds NaN or Inf."""
    _finite(x, where)


def _finite(x: FloatArray, where: str) -> None:
    # Element-wise: a sum of +Inf and -Inf would make numpy warn "invalid value".
    finite = np.isfinite(x)
    if not finite.all():
        idx = np.argwhere(~finite)[0].tolist()
        raise InvalidArgument(
            f"{where}: input contains NaN or Inf (first at index {idx}); non-finite inputs are "
            "rejected"
        )
