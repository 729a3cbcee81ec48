"""The bundled sample is exactly what the generator writes."""

from __future__ import annotations

import filecmp
from pathlib import Path

from conftest import SAMPLE

from process_data.sample_data import main


def test_bundled_sample_is_regenerated_byte_for_byte(tmp_path: Path) -> None:
    main(["--output_dir", str(tmp_path / "sample")])
    ours = sorted(p.relative_to(tmp_path / "sample") for p in (tmp_path / "sample").rglob("*.json"))
    bundled = sorted(p.relative_to(SAMPLE) for p in SAMPLE.rglob("*.json"))
    assert ours == bundled and len(ours) > 20
    for rel in ours:
        assert filecmp.cmp(tmp_path / "sample" / rel, SAMPLE / rel, shallow=False), rel


def test_other_seeds_differ(tmp_path: Path) -> None:
    main(["--output_dir", str(tmp_path / "s1"), "--seed", "1"])
    name = "answer/G1_answer/1_ChatGPT_DFS_woFilter_w2.json"
    assert (tmp_path / "s1" / name).read_bytes() != (SAMPLE / name).read_bytes()
