"""α-UMi compatibility: our stage 2 and role builders reproduce α-UMi's files byte for byte."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest
from conftest import ALPHA_UMI, read_json

from process_data.protocol import BACKBONE_CONCLUSION_PREFIX, BACKBONE_GIVE_UP, ROLES
from process_data.toolbench.cli import main

EXAMPLE = ALPHA_UMI / "train-example"


def test_stage2_is_byte_identical(tmp_path: Path, shared) -> None:
    out = tmp_path / "stage2.json"
    code = main(
        [
            "stage2",
            "--compat",
            "alpha_umi",
            "--input_path",
            str(EXAMPLE / "raw_data" / "raw_data_stage_1.json"),
            "--output_path",
            str(out),
        ]
    )
    assert code == 0
    assert out.read_bytes() == (EXAMPLE / "raw_data" / "raw_data_stage_2.json").read_bytes()


@pytest.mark.parametrize("role", ROLES)
def test_role_is_byte_identical(tmp_path: Path, role: str, shared) -> None:
    out = tmp_path / f"train_{role}.json"
    code = main(
        [
            "role",
            "--compat",
            "alpha_umi",
            "--role",
            role,
            "--prompt_type",
            f"toolbench_{role}",
            "--input_path",
            str(EXAMPLE / "raw_data" / "raw_data_stage_2.json"),
            "--output_path",
            str(out),
        ]
    )
    assert code == 0
    assert filecmp.cmp(out, EXAMPLE / f"train_{role}.json", shallow=False)


def test_role_chain_from_stage1_in_parallel(tmp_path: Path, shared) -> None:
    """Stage 2 output fed to the roles with two workers gives the same bytes."""
    stage2 = tmp_path / "s2.json"
    assert (
        main(
            [
                "stage2",
                "--compat",
                "alpha_umi",
                "--num_workers",
                "2",
                "--input_path",
                str(EXAMPLE / "raw_data" / "raw_data_stage_1.json"),
                "--output_path",
                str(stage2),
            ]
        )
        == 0
    )
    for role in ROLES:
        out = tmp_path / f"{role}.json"
        assert (
            main(
                [
                    "role",
                    "--compat",
                    "alpha_umi",
                    "--role",
                    role,
                    "--num_workers",
                    "2",
                    "--input_path",
                    str(stage2),
                    "--output_path",
                    str(out),
                ]
            )
            == 0
        )
        assert out.read_bytes() == (EXAMPLE / f"train_{role}.json").read_bytes(), role


def test_default_mode_differs_only_in_backbone_give_ups(tmp_path: Path, shared) -> None:
    """Without --compat, a give-up step's prompt is built from its own history."""
    out = tmp_path / "backbone.json"
    assert (
        main(
            [
                "role",
                "--role",
                "backbone",
                "--input_path",
                str(EXAMPLE / "raw_data" / "raw_data_stage_2.json"),
                "--output_path",
                str(out),
            ]
        )
        == 0
    )
    ours, theirs = read_json(out), read_json(EXAMPLE / "train_backbone.json")
    assert len(ours) == len(theirs)
    changed = [i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b]
    assert changed, "the fixture has give-ups, whose α-UMi prompt is stale"
    for i in changed:
        a, b = ours[i], theirs[i]
        assert a["target"].endswith(BACKBONE_CONCLUSION_PREFIX + BACKBONE_GIVE_UP)
        assert (a["tools"], a["history"], a["target"]) == (b["tools"], b["history"], b["target"])
        # our prompt ends with the full history, the last assistant turn included
        last = a["history"][-1]
        assert last["value"] in a["input"]
        assert a["input"] != b["input"]
    # the stale prompt α-UMi used belongs to an earlier step
    assert all(theirs[i]["input"] in {s["input"] for s in theirs[:i]} for i in changed)
