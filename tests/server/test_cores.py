"""Usable cores: the affinity mask, capped by a container's cgroup CPU quota (real files)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rnnserve_server.cores import cgroup_cpu_quota, usable_cores

MASK = len(os.sched_getaffinity(0))


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({"cpu.max": "200000 100000\n"}, 2.0),  # cgroup v2, 2 CPUs
        ({"cpu.max": "50000 100000\n"}, 0.5),
        ({"cpu.max": "max 100000\n"}, None),  # v2, no limit
        ({"cpu/cpu.cfs_quota_us": "150000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1.5),  # v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu.max": "garbage\n"}, None),
        ({}, None),  # no cgroup files at all
    ],
)
def test_cgroup_quota_is_read_from_v2_or_v1_files(
    tmp_path: Path, files: dict[str, str], quota: float | None
) -> None:
    assert cgroup_cpu_quota(write(tmp_path, files)) == quota


def test_usable_cores_is_the_mask_capped_by_the_quota_rounded_up(tmp_path: Path) -> None:
    assert usable_cores(write(tmp_path / "none", {})) == MASK
    assert usable_cores(write(tmp_path / "half", {"cpu.max": "50000 100000"})) == 1
    limited = write(
        tmp_path / "v1", {"cpu/cpu.cfs_quota_us": "150000", "cpu/cpu.cfs_period_us": "100000"}
    )
    assert usable_cores(limited) == min(MASK, 2)
    big = write(tmp_path / "big", {"cpu.max": f"{(MASK + 8) * 100000} 100000"})
    assert usable_cores(big) == MASK  # a quota above the mask doesn't add cores
