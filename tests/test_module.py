"""DGGGANModule at tiny width: which weights each update touches, ablations, EMA, checkpoints, non-finite guard."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from dgggan_pl.module import DGGGANModule, NonFiniteLossError

LR_SIZE, SCALE = 8, 4  # debug=smoke crops: LR 8 -> HR 32


def build_module(compose: Callable[..., DictConfig], overrides: Sequence[str] = ()) -> DGGGANModule:
    cfg = compose(["experiment=full", "debug=smoke", *overrides])
    parts = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("model", "loss", "optim")}
    return DGGGANModule(**parts, metrics=None, seed=0)


def loader(num_batches: int, nan: bool = False) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    items = []
    for _ in range(num_batches * 2):
        hr = torch.rand(3, LR_SIZE * SCALE, LR_SIZE * SCALE, generator=generator)
        if nan:
            hr[0, 0, 0] = float("nan")
        lr = torch.nn.functional.avg_pool2d(hr[None], SCALE)[0]
        items.append({"lr": lr, "hr": hr, "name": f"image{len(items)}"})
    return DataLoader(items, batch_size=2)


def fit(
    module: DGGGANModule, iterations: int, callbacks: Sequence[Callback] = (), nan: bool = False
) -> Trainer:
    trainer = Trainer(
        accelerator="cpu",
        max_steps=module.objective.spec.optimizer_steps(iterations, module.hparams.optim),
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
    )
    trainer.fit(module, train_dataloaders=loader(iterations, nan=nan))
    return trainer


def snapshot(module: torch.nn.Module | None) -> dict[str, torch.Tensor]:
    return {} if module is None else {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module | None) -> bool:
    after = snapshot(module)
    return any(not torch.equal(before[k], after[k]) for k in before)


class UpdateRecorder(Callback):
    """Records, for every optimizer.step, which networks' weights it changed."""

    NETWORKS = ("generator", "image_critic", "gradient_critic")

    def __init__(self) -> None:
        self.steps: list[tuple[int, set[str]]] = []

    def on_train_start(self, trainer: Trainer, pl_module: DGGGANModule) -> None:
        for index, optimizer in enumerate(trainer.optimizers):
            state: dict[str, dict] = {}

            def pre(opt, args, kwargs, state=state) -> None:
                state["before"] = {n: snapshot(getattr(pl_module, n)) for n in self.NETWORKS}

            def post(opt, args, kwargs, state=state, index=index) -> None:
                moved = {n for n in self.NETWORKS if changed(state["before"][n], getattr(pl_module, n))}
                self.steps.append((index, moved))

            optimizer.register_step_pre_hook(pre)
            optimizer.register_step_post_hook(post)


def test_critic_updates_touch_only_critics_and_generator_updates_only_the_generator(compose) -> None:
    module = build_module(compose, ["optim.n_critic=2", "optim.scheduler.milestones=[1]"])
    recorder = UpdateRecorder()
    trainer = fit(module, iterations=2, callbacks=[recorder])
    # per iteration: two critic updates (optimizer 1), then one generator update (optimizer 0)
    assert [index for index, _ in recorder.steps] == [1, 1, 0, 1, 1, 0]
    for index, moved in recorder.steps:
        assert moved == ({"generator"} if index == 0 else {"image_critic", "gradient_critic"})
    assert trainer.global_step == 6 and module.iteration == 2
    # MultiStepLR(milestones=[1], gamma=0.5) stepped once per iteration, not once per optimizer step
    for optimizer in trainer.optimizers:
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * 1e-4)


def test_pretrain_builds_no_critic_and_no_vgg(compose) -> None:
    module = build_module(compose, ["experiment=pretrain"])
    assert module.image_critic is None and module.gradient_critic is None and module.critics == {}
    assert module.objective.critic_loss is None and set(module.objective.terms) == {"pixel", "grad_branch"}
    optimizers, _ = module.configure_optimizers()
    assert len(optimizers) == 1
    recorder = UpdateRecorder()
    fit(module, iterations=2, callbacks=[recorder])
    assert recorder.steps == [(0, {"generator"}), (0, {"generator"})]


def test_no_grad_ablation_drops_the_gradient_branch_critic_and_weights(compose) -> None:
    module = build_module(compose, ["ablation=no_grad", "loss.terms.percept.weight=0"])
    assert module.gradient_critic is None and module.image_critic is not None
    assert module.generator(torch.rand(1, 3, LR_SIZE, LR_SIZE)).grad_map is None
    assert set(module.objective.terms) == {"pixel", "adv"}  # mu = eps = eta = 0, theta = 0 here
    assert not any(
        key.startswith(("gradient_critic.", "generator.gradient_branch.")) for key in module.state_dict()
    )
    recorder = UpdateRecorder()
    fit(module, iterations=1, callbacks=[recorder])
    assert recorder.steps == [(1, {"image_critic"}), (0, {"generator"})]


def test_inconsistent_objective_is_refused(compose) -> None:
    with pytest.raises(ValueError, match="loss.terms.adv_grad needs a model.gradient_critic config"):
        build_module(compose, ["model.gradient_critic=null"])


def test_a_generator_without_a_gradient_map_drops_its_terms_by_itself(compose, caplog) -> None:
    """Read from the generator's output, not from a flag of its class: eta is off, nothing to type."""
    with caplog.at_level("INFO", logger="dgggan_pl.module"):
        module = build_module(
            compose, ["model.generator.use_gradient_branch=false", "loss.terms.percept.weight=0"]
        )
    assert "grad_branch" not in module.objective.terms and module.objective.spec.gradient_map_terms == []
    assert set(module.critics) == {"image_critic", "gradient_critic"}  # both judge what any generator outputs
    assert "loss.terms ['grad_branch'] off: the generator outputs no gradient map" in caplog.text
    # with the branch the term runs: test_pretrain_builds_no_critic_and_no_vgg ({"pixel", "grad_branch"})


def test_ema_follows_the_generator_and_is_checkpointed_without_frozen_networks(compose, tmp_path) -> None:
    decay = 0.5
    module = build_module(compose, [f"optim.ema_decay={decay}", "loss.terms.percept.weight=0"])
    start = snapshot(module.generator)
    trainer = fit(module, iterations=1)
    live, ema = snapshot(module.generator), snapshot(module.generator_ema)
    for key in start:
        assert torch.allclose(ema[key], decay * start[key] + (1 - decay) * live[key], atol=1e-7)
    assert module.eval_generator is module.generator_ema

    path = tmp_path / "module.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)  # plain containers and tensors only
    keys = checkpoint["state_dict"].keys()
    prefixes = {key.split(".", 1)[0] for key in keys}
    assert prefixes == {"generator", "image_critic", "gradient_critic", "generator_ema"}
    strip = lambda prefix: {k[len(prefix) :] for k in keys if k.startswith(prefix)}  # noqa: E731
    assert strip("generator_ema.") == strip("generator.")
    assert checkpoint["hyper_parameters"]["model"]["generator"]["_target_"].endswith("DGGGANGenerator")
    assert checkpoint["dgggan"]["iteration"] == 1


def test_non_finite_losses_are_skipped_then_stop_the_run(compose) -> None:
    module = build_module(compose, ["optim.max_consecutive_nonfinite=3", "loss.terms.percept.weight=0"])
    start = {name: snapshot(getattr(module, name)) for name in ("generator", "image_critic")}
    with pytest.raises(NonFiniteLossError, match="3 consecutive non-finite losses"):
        fit(module, iterations=4, nan=True)
    for name, before in start.items():
        assert not changed(before, getattr(module, name)), f"{name} was updated from a NaN loss"


class ValidationCapture(Callback):
    """Keeps every validation batch's LR input, the module's SR output and the eval generator's weights then."""

    def __init__(self) -> None:
        self.records: list[tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]] = []

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self.records.append((batch["lr"].clone(), outputs["sr"].clone(), snapshot(pl_module.eval_generator)))


def test_validation_runs_in_float32_under_bf16_mixed_training(compose) -> None:
    # the bicubic skip puts the untrained SR inside [0, 1], so the clamp does not hide differences
    module = build_module(compose, ["loss.terms.percept.weight=0", "model.generator.global_skip=bicubic"])
    capture = ValidationCapture()
    trainer = Trainer(
        accelerator="cpu",
        precision="bf16-mixed",
        max_steps=2 * 2,  # two GAN iterations
        val_check_interval=1,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[capture],
    )
    trainer.fit(module, train_dataloaders=loader(2), val_dataloaders=loader(1))
    assert len(capture.records) == 2
    reference = copy.deepcopy(module.eval_generator)
    for lr, sr, weights in capture.records:
        reference.load_state_dict(weights)
        with torch.no_grad():
            fp32 = reference(lr).sr.clamp(0, 1)
            with torch.autocast("cpu", dtype=torch.bfloat16):  # negative control: what bf16 eval would give
                bf16 = reference(lr).sr.clamp(0, 1)
        assert 0 < sr.mean() < 1 and sr.dtype == torch.float32 and torch.equal(sr, fp32)
        assert not torch.equal(bf16.float(), fp32)


def test_evaluation_refuses_weights_that_are_not_float32(compose) -> None:
    module = build_module(compose, ["loss.terms.percept.weight=0"])
    trainer = Trainer(accelerator="cpu", precision="bf16-true", logger=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match="trainer.precision keeps the generator in torch.bfloat16"):
        trainer.validate(module, dataloaders=loader(1))


def test_set_names_come_from_the_constructor_and_match_the_datamodule(compose) -> None:
    from hydra.utils import instantiate

    from dgggan_pl.train import build_module as build_from_config

    cfg = compose(["experiment=demo", "debug=smoke", "metrics.lpips=disabled", "data.val_sets=[Set5]"])
    module = build_from_config(cfg)
    datamodule = instantiate(cfg.data)
    assert module.val_sets == datamodule.val_set_names == ["Set5", "Sample"]
    assert module.test_sets == datamodule.test_set_names == ["Sample"]
    # the metrics exist before any trainer, so what they cannot compute is known up front
    assert set(module._metrics) == {"Set5", "Sample"} and module._trainer is None
    assert "pi" in module.unavailable_metrics()  # no Ma model in the test environment


def test_validation_logs_under_the_given_set_names_without_a_datamodule(compose) -> None:
    cfg = compose(["experiment=full", "debug=smoke", "metrics.lpips=disabled", "loss.terms.percept.weight=0"])
    parts = {
        key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("model", "loss", "optim", "metrics")
    }
    module = DGGGANModule(**parts, seed=0, val_sets=["First", "Second"])
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    results = trainer.validate(module, dataloaders=[loader(1), loader(1)])
    assert {key for result in results for key in result} >= {"val/First/psnr", "val/Second/ssim"}
    with pytest.raises(ValueError, match="val_sets=\\['First', 'Second'\\] but the trainer has 1"):
        trainer.validate(module, dataloaders=loader(1))


def test_critic_learning_rate_is_its_own_setting(compose) -> None:
    module = build_module(compose, ["optim.generator.lr=5e-4", "loss.terms.percept.weight=0"])
    (opt_g, opt_d), _ = module.configure_optimizers()
    assert opt_g.param_groups[0]["lr"] == 5e-4 and opt_d.param_groups[0]["lr"] == 1e-4  # paper's critic rate


def test_critic_updates_of_one_iteration_reuse_its_batch_with_fresh_penalty_noise(
    compose, one_torch_thread
) -> None:
    module = build_module(compose, ["optim.n_critic=3", "loss.terms.percept.weight=0"])
    calls: list[tuple[str, torch.Tensor, torch.Tensor, int]] = []
    critic_loss = module.objective.critic_loss
    names = {id(critic): name for name, critic in module.critics.items()}

    def recording(critic, real, fake, noise):
        calls.append((names[id(critic)], real.clone(), fake.clone(), noise.initial_seed()))
        return critic_loss(critic, real, fake, noise)

    module.objective.critic_loss = recording
    fit(module, iterations=2)
    image = [call for call in calls if call[0] == "image_critic"]
    assert len(image) == 2 * 3 and len(calls) == 2 * 3 * 2
    for first, *others in (image[:3], image[3:]):  # within an iteration: the same real batch and SR
        assert all(torch.equal(first[1], o[1]) and torch.equal(first[2], o[2]) for o in others)
        assert len({first[3], *(o[3] for o in others)}) == 3  # each update draws its own interpolation
    assert not torch.equal(image[0][1], image[3][1])  # the next iteration reads the next batch
