"""Any generator trains through the same pipeline: every `conf/model` generator, `model=rrdbnet` end to end, and a
new network added by following docs/models.md#adding-an-architecture literally.

What a new architecture touches is measured here: `model=rrdbnet` is two config files (conf/model/rrdbnet.yaml,
conf/model/smoke/rrdbnet.yaml) and no code; the doc's toy network is the three files its section writes.
"""

from __future__ import annotations

import csv
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.errors import ConfigCompositionException

from dgggan_pl.config import compose_config, config_dir
from dgggan_pl.objective import ObjectiveSpec
from dgggan_pl.train import build_module, train

DOC = Path(__file__).resolve().parents[1] / "docs" / "models.md"
MODELS = sorted(path.stem for path in (config_dir() / "model").glob("*.yaml"))
QUIET = ["callbacks.image_panels=null", "metrics.lpips=disabled", "data.test_sources={}"]
SMOKE_PARAMS = 100_000  # debug=smoke's generators have a few thousand parameters; the real ones millions
TRAIN_COMMAND = "python -m dgggan_pl.train"
PRETRAIN_RUN = "<pretrain-run-folder>"  # the doc's placeholder for the first command's run folder


def doc_section(title: str) -> str:
    """The text of docs/models.md's `## <title>` section, up to the next `## ` heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", DOC.read_text(encoding="utf-8"), re.M | re.S)
    assert match, f"docs/models.md has no '## {title}' section"
    return match.group(1)


def named_blocks(section: str) -> dict[str, str]:
    """Fenced code blocks whose first line is `# <file path>`: path -> the file's text (that line included)."""
    blocks = re.findall(r"^```\w*\n(# (\S+)\n.*?)^```", section, re.M | re.S)
    return {path: text for text, path in blocks}


def train_commands(section: str) -> list[list[str]]:
    """The overrides of every `python -m dgggan_pl.train ...` command of the section's shell block (a command
    may continue over lines ending in a backslash)."""
    lines = section.replace("\\\n", " ").splitlines()
    return [shlex.split(line)[3:] for line in lines if line.startswith(TRAIN_COMMAND)]


def logged_columns(output_dir: Path) -> set[str]:
    """The metric names of a `logger=csv` run that got a value in any row."""
    (metrics_file,) = output_dir.glob("csv/version_*/metrics.csv")
    with metrics_file.open() as file:
        return {key for row in csv.DictReader(file) for key, value in row.items() if value}


def run(output_dir: Path, *overrides: str, logger: str = "none") -> dict[str, Any]:
    """`train` one smoke run into `output_dir`; returns its last checkpoint."""
    metrics = train(
        compose_config(
            [*overrides, "debug=smoke", f"logger={logger}", f"paths.output_dir={output_dir}", *QUIET]
        )
    )
    assert {key for key in metrics if key.startswith("val/Sample/")} >= {"val/Sample/psnr", "val/Sample/ssim"}
    return torch.load(output_dir / "checkpoints" / "last.ckpt", weights_only=True)


def networks(checkpoint: dict[str, Any]) -> set[str]:
    return {key.split(".", 1)[0] for key in checkpoint["state_dict"]}


def test_smoke_sizes_are_each_generators_own() -> None:
    """debug=smoke merges conf/model/smoke/<model>.yaml: none of DGGGAN's keys reach RRDBNet's constructor."""
    generator = compose_config(["model=rrdbnet", "debug=smoke"]).model.generator
    assert set(generator) == {
        "_target_",
        "in_channels",
        "channels",
        "num_blocks",
        "growth",
        "scale",
        "negative_slope",
    }
    assert (generator.channels, generator.num_blocks, generator.growth) == (8, 1, 4)


def test_a_model_without_smoke_sizes_is_refused_under_smoke_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "bare.yaml").write_text("generator:\n  _target_: torch.nn.Identity\n")
    search = f"hydra.searchpath=[file://{tmp_path}]"
    assert compose_config(["model=bare", search]).model.generator._target_ == "torch.nn.Identity"
    with pytest.raises(ConfigCompositionException, match="model/smoke/bare"):
        compose_config(["model=bare", search, "debug=smoke"])


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("model", MODELS)
def test_every_registered_generator_trains_under_smoke(
    model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GAN experiment, both critics, validation: the gradient-branch term runs iff the output has a map."""
    parses: list[object] = []
    parse = ObjectiveSpec.from_config.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(
        ObjectiveSpec, "from_config", classmethod(lambda cls, loss: parses.append(loss) or parse(cls, loss))
    )
    checkpoint = run(tmp_path, "experiment=full", f"model={model}", "iterations=2", logger="csv")
    assert len(parses) == 1, (
        "train reads cfg.loss once: the config check, warning, module and step budget share it"
    )
    assert networks(checkpoint) == {"generator", "image_critic", "gradient_critic"}
    assert checkpoint["global_step"] == 2 * 2 and checkpoint["dgggan"]["iteration"] == 2
    size = sum(v.numel() for k, v in checkpoint["state_dict"].items() if k.startswith("generator."))
    assert 0 < size < SMOKE_PARAMS, (
        f"conf/model/smoke/{model}.yaml should shrink the generator ({size} parameters)"
    )
    generator = build_module(compose_config([f"model={model}", "experiment=full", "debug=smoke"])).generator
    output = generator(torch.rand(1, 3, 8, 8))
    has_map = not isinstance(output, torch.Tensor) and output.grad_map is not None
    columns = logged_columns(tmp_path)
    assert {
        "train/loss_pixel",
        "train/loss_adv",
        "train/loss_adv_grad",
        "train/image_critic/wdist",
    } <= columns
    assert ("train/loss_grad_branch" in columns) == has_map


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_rrdbnet_pretrain_and_full_validate_resume_exactly_and_chain(tmp_path: Path) -> None:
    """ESRGAN's generator, by its two config files: the PSNR stage (pixel L1 alone: no gradient map, no eta); the
    GAN with DGGGAN's critics, validated and resumed bit for bit from a mid-run checkpoint; `model.init_from`
    starting the GAN from the PSNR stage's weights."""
    pretrain = run(
        tmp_path / "pretrain", "experiment=pretrain", "model=rrdbnet", "iterations=2", logger="csv"
    )
    assert networks(pretrain) == {"generator"}
    columns = logged_columns(tmp_path / "pretrain")
    assert "train/loss_pixel" in columns and not any("grad_branch" in c or "critic" in c for c in columns)
    assert pretrain["hyper_parameters"]["model"]["generator"]["_target_"].endswith("rrdbnet.RRDBNet")

    full = ["experiment=full", "model=rrdbnet", "trainer.val_check_interval=2"]
    spec = build_module(compose_config([*full, "debug=smoke"])).objective.spec
    assert [t.name for t in spec.terms] == ["percept", "pixel", "grad_img", "adv", "adv_grad"]
    assert dict(spec.critics) == {"image_critic": "sr", "gradient_critic": "sr_gradient"}

    straight = run(tmp_path / "straight", *full, "iterations=4")
    run(tmp_path / "resumed", *full, "iterations=2")
    resumed = run(tmp_path / "resumed", *full, "iterations=4", "ckpt_path=last")
    assert resumed["dgggan"]["iteration"] == straight["dgggan"]["iteration"] == 4
    assert networks(resumed) == {"generator", "image_critic", "gradient_critic"}
    different = [k for k, v in straight["state_dict"].items() if not torch.equal(v, resumed["state_dict"][k])]
    assert not different, f"weights differ after resume: {different[:5]}"

    # the GAN starts from the PSNR stage: model.init_from loads the pretrain run's RRDBNet, strictly
    start = f"model.init_from={tmp_path / 'pretrain' / 'checkpoints' / 'last.ckpt'}"
    generator = build_module(compose_config([*full, start, "debug=smoke"])).generator
    for key, value in generator.state_dict().items():
        assert torch.equal(value, pretrain["state_dict"][f"generator.{key}"]), key


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_a_new_architecture_is_the_three_files_of_the_doc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/models.md's steps, taken literally: its named blocks written as files, its commands run."""
    section = doc_section("Adding an architecture")
    files = named_blocks(section)
    assert sorted(files) == ["my_conf/model/smoke/tiny.yaml", "my_conf/model/tiny.yaml", "my_nets.py"]
    for path, text in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    assert "export PYTHONPATH=." in section
    monkeypatch.chdir(
        tmp_path
    )  # `file://my_conf` and `PYTHONPATH=.` are relative to where the user runs them
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_nets", raising=False)
    commands = train_commands(section)
    assert [next(a for a in args if a.startswith("experiment=")) for args in commands] == [
        "experiment=pretrain",
        "experiment=full",
    ]
    expected = {
        "experiment=pretrain": {"generator"},
        "experiment=full": {"generator", "image_critic", "gradient_critic"},
    }
    pretrain_run = tmp_path / "run0"
    for index, args in enumerate(commands):
        stage = next(a for a in args if a.startswith("experiment="))
        args = [a.replace(PRETRAIN_RUN, str(pretrain_run)) for a in args]
        checkpoint = run(tmp_path / f"run{index}", *args)  # the doc's own command ends in debug=smoke
        assert networks(checkpoint) == expected[stage]
        generator = checkpoint["hyper_parameters"]["model"]["generator"]
        assert generator == {"_target_": "my_nets.TinySR", "channels": 4, "scale": 4}
    # the GAN stage started from the PSNR stage's generator (model.init_from: its tensors, loaded strictly)
    full_args = commands[1]
    assert f"model.init_from={PRETRAIN_RUN}/checkpoints/last.ckpt" in full_args
    started = build_module(
        compose_config([a.replace(PRETRAIN_RUN, str(pretrain_run)) for a in full_args])
    ).generator
    pretrain = torch.load(pretrain_run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for key, value in started.state_dict().items():
        assert torch.equal(value, pretrain[f"generator.{key}"]), key
    assert not (config_dir() / "model" / "tiny.yaml").exists()  # nothing of it is in the package
