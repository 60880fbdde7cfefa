"""Safe generator loading: Lightning checkpoints (weights_only), safetensors + JSON, target allow-list."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dgggan_pl.models.generator import DGGGANGenerator
from dgggan_pl.weights import (
    UnwritableFolder,
    WeightsError,
    load_generator,
    save_generator_safetensors,
    sidecar_path,
)


class _CreatesMarkerOnUnpickle:
    """Unpickling this calls `open(marker, "w")`: stands in for any code a crafted checkpoint would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _state(path: Path, prefix: str = "generator.") -> dict[str, torch.Tensor]:
    state = torch.load(path, weights_only=True)["state_dict"]
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _assert_same_weights(generator: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    actual = generator.state_dict()
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, rtol=0, atol=0)


def test_loads_lightning_checkpoint(tiny_generator_checkpoint) -> None:
    path = tiny_generator_checkpoint()
    generator, config = load_generator(path)
    assert isinstance(generator, DGGGANGenerator)
    assert not generator.training
    assert config["channels"] == 8
    _assert_same_weights(generator, _state(path))


def test_ema_selection(tiny_generator_checkpoint) -> None:
    path = tiny_generator_checkpoint(ema=True)
    raw, ema = _state(path), _state(path, "generator_ema.")
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)  # the two sets differ, so the choice is visible
    _assert_same_weights(load_generator(path)[0], ema)  # default: EMA when present
    _assert_same_weights(load_generator(path, use_ema=True)[0], ema)
    _assert_same_weights(load_generator(path, use_ema=False)[0], raw)
    no_ema = tiny_generator_checkpoint("plain.ckpt")
    with pytest.raises(WeightsError, match=r"plain\.ckpt.*no EMA"):
        load_generator(no_ema, use_ema=True)


def test_crafted_pickle_is_refused_without_running(tiny_generator_checkpoint, tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.ckpt"
    checkpoint = torch.load(tiny_generator_checkpoint(), weights_only=True)
    checkpoint["callbacks"] = _CreatesMarkerOnUnpickle(marker)
    torch.save(checkpoint, path)

    with pytest.raises(WeightsError, match=r"evil\.ckpt: refused to load"):
        load_generator(path)
    assert not marker.exists()

    # Negative control: the payload is real, an unrestricted unpickler does run it.
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize(
    "target",
    [
        "os.system",
        "builtins.eval",
        "dgggan_pl.models.generator.torch.nn.Linear",  # a class reached through a module attribute
        "dgggan_pl.models.gradient.gradient_magnitude",  # ours, but a function, not a model class
    ],
)
def test_foreign_targets_are_refused(tiny_generator_checkpoint, tmp_path: Path, target: str) -> None:
    path = tiny_generator_checkpoint()
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["hyper_parameters"]["model"]["generator"] = {"_target_": target, "_args_": ["true"]}
    torch.save(checkpoint, path)
    with pytest.raises(WeightsError, match=r"tiny\.ckpt: refusing generator config _target_"):
        load_generator(path)


def test_strict_load_names_keys(tiny_generator_checkpoint) -> None:
    path = tiny_generator_checkpoint()
    checkpoint = torch.load(path, weights_only=True)
    state = checkpoint["state_dict"]
    state["generator.extra.weight"] = torch.zeros(1)
    del state["generator.image_out.bias"]
    torch.save(checkpoint, path)
    with pytest.raises(
        WeightsError, match=r"missing keys: \['image_out.bias'\].*unexpected keys: \['extra.weight'\]"
    ):
        load_generator(path)


def test_mismatched_config_names_file(tiny_generator_checkpoint) -> None:
    path = tiny_generator_checkpoint()
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["hyper_parameters"]["model"]["generator"]["channels"] = 16
    torch.save(checkpoint, path)
    with pytest.raises(WeightsError, match=r"tiny\.ckpt: weights do not fit"):
        load_generator(path)


def test_safetensors_round_trip(tiny_generator_checkpoint, tmp_path: Path) -> None:
    generator, config = load_generator(tiny_generator_checkpoint())
    out = tmp_path / "export" / "tiny.safetensors"
    config_path = save_generator_safetensors(generator, config, out)
    assert config_path == sidecar_path(out) == out.with_suffix(".json")
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny.json", "tiny.safetensors"]  # no temp files
    assert json.loads(config_path.read_text())["generator"] == config

    loaded, loaded_config = load_generator(out)
    assert loaded_config == config
    _assert_same_weights(loaded, generator.state_dict())
    with pytest.raises(WeightsError, match="holds the raw"):
        load_generator(out, use_ema=True)

    config_path.unlink()  # the same config is inside the file: what tensors-only loaders (spandrel) read
    loaded, loaded_config = load_generator(out)
    assert loaded_config == config
    _assert_same_weights(loaded, generator.state_dict())
    save_file(generator.state_dict(), out)  # tensors alone, no config anywhere
    with pytest.raises(WeightsError, match=r"tiny\.safetensors: its config .*tiny\.json is missing"):
        load_generator(out)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_non_finite_weights_are_refused_naming_file_and_tensor(
    tiny_generator_checkpoint, tmp_path: Path, bad: float, suffix: str
) -> None:
    generator, config = load_generator(tiny_generator_checkpoint())
    with torch.no_grad():
        generator.image_out.weight[0, 0, 0, 0] = bad  # one value of a late layer
    path = tmp_path / f"bad{suffix}"
    if suffix == ".ckpt":
        state = {f"generator.{k}": v for k, v in generator.state_dict().items()}
        torch.save({"state_dict": state, "hyper_parameters": {"model": {"generator": config}}}, path)
    else:
        save_generator_safetensors(generator, config, path)
    with pytest.raises(WeightsError) as error:
        load_generator(path)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: tensor image_out.weight holds NaN/Inf (1 of 216 values")


def test_unknown_config_version_is_refused(tiny_generator_checkpoint, tmp_path: Path) -> None:
    generator, config = load_generator(tiny_generator_checkpoint())
    out = tmp_path / "tiny.safetensors"
    config_path = save_generator_safetensors(generator, config, out)
    sidecar = json.loads(config_path.read_text())
    for version in (2, None):
        config_path.write_text(json.dumps({**sidecar, "version": version}))
        with pytest.raises(WeightsError) as error:
            load_generator(out)
        assert str(error.value) == (
            f"{config_path}: dgggan-pl-generator config version {version!r}, but this dgggan-pl reads version 1 "
            "only; use the dgggan-pl release that wrote it, or export the weights again"
        )


def test_an_unwritable_folder_is_one_line_naming_it(
    tiny_generator_checkpoint, tmp_path: Path, monkeypatch
) -> None:
    generator, config = load_generator(tiny_generator_checkpoint())
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(UnwritableFolder, match=rf"^cannot write to {blocker / 'sub'} \(Not a directory\)"):
        save_generator_safetensors(generator, config, blocker / "sub" / "g.safetensors")

    def refuse(*args: object) -> None:  # what a read-only folder does to a non-root user, mid-write
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", refuse)
    folder = tmp_path / "ro"
    with pytest.raises(UnwritableFolder) as error:
        save_generator_safetensors(generator, config, folder / "g.safetensors")
    assert str(error.value) == f"cannot write to {folder} (Permission denied); choose a writable folder"
    assert list(folder.iterdir()) == []  # no temp file outlives the refusal


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"not a zip archive")
    with pytest.raises(WeightsError, match=r"corrupt\.ckpt"):
        load_generator(corrupt)
    with pytest.raises(WeightsError, match=r"model\.pt: unknown weights format"):
        (tmp_path / "model.pt").write_bytes(b"")
        load_generator(tmp_path / "model.pt")
    with pytest.raises(WeightsError, match=r"absent\.ckpt: weights file not found"):
        load_generator(tmp_path / "absent.ckpt")
