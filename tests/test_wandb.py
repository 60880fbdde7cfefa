"""W&B offline: the run files are written and hold the logged training and validation keys.

wandb 0.31 writes no summary JSON offline and ships no reader for `.wandb` files, so the test parses the
file itself: a 7-byte header, then LevelDB-log framing (32 KiB blocks, 7-byte record headers) around
`wandb_internal_pb2.Record` protobufs (docs/design.md#logging).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from dgggan_pl.train import train

wandb_pb2 = pytest.importorskip("wandb.proto.wandb_internal_pb2")

BLOCK, HEADER, FILE_HEADER = 32 * 1024, 7, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a .wandb file"
    records, chunks, offset = [], [], FILE_HEADER
    while offset + HEADER <= len(data):
        if BLOCK - offset % BLOCK < HEADER:  # block trailer too small for a header: zero padding
            offset += BLOCK - offset % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[offset : offset + HEADER])
        offset += HEADER
        if kind == 0 and length == 0:
            break
        chunks.append(data[offset : offset + length])
        offset += length
        if kind in (FULL, LAST):
            record = wandb_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            records.append(record)
            chunks = []
    return records


def logged_keys(records: list) -> tuple[set[str], dict[str, object]]:
    history, summary = set(), {}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history |= {item.key or "/".join(item.nested_key) for item in record.history.item}
        elif kind == "summary":
            summary |= {
                item.key or "/".join(item.nested_key): json.loads(item.value_json)
                for item in record.summary.update
            }
    return history, summary


def history_rows(records: list) -> list[dict[str, object]]:
    """Every logged row as {key: value} (media rows hold their JSON description)."""
    rows = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
    return rows


def test_offline_wandb_run_holds_training_and_validation_keys(
    compose, tmp_path, monkeypatch, caplog, data_dir
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    niqe_model = data_dir / "iqa-models" / "niqe_release" / "modelparameters.mat"
    # experiment=full: 2 optimizer steps per iteration, so optimizer steps and iterations differ
    overrides = ["experiment=full", "debug=smoke", "logger=wandb", f"paths.output_dir={tmp_path}"]
    overrides.append(f"metrics.niqe_model_path={niqe_model}")
    train(compose(overrides))
    assert "wandb sync" in caplog.text  # the one-line note on how to sync

    (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    history, summary = logged_keys(read_records(run_file))
    assert {"train/loss_pixel", "train/loss_grad_branch", "train/loss_g", "trainer/global_step"} <= history
    assert {"val/Sample/psnr", "val/Sample/ssim", "val/Sample/lpips_random_backbone"} <= history
    assert "val/panels/_type" in history  # the image panel entry (media stored beside the run file)
    assert "val/Sample/niqe" in history  # the shared LIVE pristine model
    assert "val/Sample/pi" not in history  # unavailable here (no Ma model): reported, never faked
    assert summary["model/generator_params"] > 0
    assert summary["data/global_batch"] == 2 and summary["data/per_process_batch"] == 2
    # the reasons for missing metrics are in the run, once (no Ma model here)
    assert summary["metrics_unavailable/pi"] and summary["metrics_unavailable/ma"]
    assert "metrics_unavailable/niqe" not in summary  # computed here

    # one step axis: every row carries trainer/iteration, W&B's x-axis (trainer/global_step) equals it and
    # never goes back: train rows 1..4, validation and panels at 2 and 4, the two test rows at 4
    rows = history_rows(read_records(run_file))
    assert rows and all(row["trainer/global_step"] == row["trainer/iteration"] for row in rows)
    axis = [row["trainer/global_step"] for row in rows]
    assert axis == sorted(axis) and axis[-1] == 4
    panel_rows = [row for row in rows if any(key.startswith("val/panels") for key in row)]
    assert [row["trainer/iteration"] for row in panel_rows] == [2, 4]
    assert [row["trainer/iteration"] for row in rows if "val/Sample/psnr" in row] == [2, 4]
    assert [row["trainer/iteration"] for row in rows if "train/loss_g" in row] == [1, 2, 3, 4]
    assert list(tmp_path.glob("wandb/offline-run-*/files/media/images/val/panels_*.png"))
    # forcing W&B offline must not change the recorded config: rank records and run_info agree
    info = json.loads((tmp_path / "run_info.json").read_text())
    rank = json.loads((tmp_path / "ranks" / "rank0.json").read_text())
    assert info["config_sha256"] == rank["config_sha256"]
