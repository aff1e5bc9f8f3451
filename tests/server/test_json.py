"""`FastJSON`: numpy arrays of every layout a route may hand it, written as plain JSON numbers."""

from __future__ import annotations

import json

import numpy as np

from bge_server.service import FastJSON


def test_strided_views_and_numpy_scalars_are_written_like_lists() -> None:
    matrix = np.arange(12, dtype=np.float32).reshape(3, 4)
    content = {"columns": matrix[:, :2], "every_other": matrix[::2], "transposed": matrix.T,
               "scalar": np.float32(0.5), "count": np.int64(3)}
    written = json.loads(FastJSON(content).body)
    assert written == {"columns": matrix[:, :2].tolist(), "every_other": matrix[::2].tolist(),
                       "transposed": matrix.T.tolist(), "scalar": 0.5, "count": 3}
