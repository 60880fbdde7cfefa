"""Learned/perceptual metrics with external weights: LPIPS (AlexNet v0.1) and Ma's NRQM via pyiqa.

Both depend on files this project cannot ship, so each has explicit modes and says exactly what is missing:

* LPIPS `pretrained` needs torchvision's ImageNet AlexNet (`$TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth`);
  `random` (tests only) keeps the packaged v0.1 linear heads on a random backbone and is reported under the
  key `lpips_random_backbone`, never `lpips`; `disabled` skips it.
* Ma (NRQM) uses pyiqa's port (optional extra `pi`: pyiqa is heavy and non-commercially licensed) and its
  regression model `NRQM_model.mat`; without either, Ma and PI are *unavailable* with the reason, never a number.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from dgggan_pl.metrics.fidelity import quantize_8bit
from dgggan_pl.metrics.per_image import PerImageMetric

LPIPS_MODES = ("pretrained", "random", "disabled")
LPIPS_KEY = "lpips"
LPIPS_RANDOM_KEY = "lpips_random_backbone"
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
ALEXNET_URL = f"https://download.pytorch.org/models/{ALEXNET_FILE}"
NRQM_FILE = "NRQM_model.mat"
NRQM_URL = f"https://github.com/chaofengc/IQA-PyTorch/releases/download/v0.1-weights/{NRQM_FILE}"
PI_EXTRA_HINT = "install the optional extra: pip install 'dgggan-pl[pi]' (pyiqa, non-commercial licence)"


class PretrainedWeightsMissing(FileNotFoundError):
    """A pretrained backbone file is missing and could not be downloaded."""


def alexnet_checkpoint_path() -> Path:
    """Where torchvision looks for (and downloads) the ImageNet AlexNet: `$TORCH_HOME/hub/checkpoints/`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE


def lpips_key(mode: str) -> str:
    """The metric key for a LPIPS mode: a random backbone is never reported as `lpips`."""
    if mode not in LPIPS_MODES:
        raise ValueError(f"metrics.lpips must be one of {LPIPS_MODES}, got {mode!r}")
    return LPIPS_RANDOM_KEY if mode == "random" else LPIPS_KEY


def alexnet_missing_message(download_failed: str | None = None) -> str:
    """One line: which AlexNet file LPIPS needs, where it goes, and the overrides that fetch or skip it."""
    target = alexnet_checkpoint_path()
    failed = f"; downloading it failed ({download_failed})" if download_failed else ""
    return (
        f"LPIPS needs torchvision's ImageNet AlexNet {target}{failed}; copy {ALEXNET_URL} there "
        "(TORCH_HOME relocates it) or set metrics.download=true, or skip LPIPS with metrics.lpips=disabled"
    )


def build_lpips(mode: str, download: bool = False) -> nn.Module:
    """A frozen, eval-mode `lpips.LPIPS(net='alex', version='0.1')` for `mode` in {pretrained, random}.

    Raises `PretrainedWeightsMissing` (one line naming the AlexNet file and the override that skips LPIPS)
    when `pretrained` weights are not cached and `download` is off or fails: never a network attempt offline.
    """
    import lpips

    lpips_key(mode)
    if mode == "disabled":
        raise ValueError("build_lpips: LPIPS is disabled (metrics.lpips=disabled); do not build it")
    if mode == "pretrained" and not download and not alexnet_checkpoint_path().is_file():
        raise PretrainedWeightsMissing(alexnet_missing_message())
    random_backbone = mode == "random"
    if random_backbone:
        warnings.warn(
            f"LPIPS uses a RANDOM AlexNet backbone (metrics.lpips=random): values are logged as "
            f"'{LPIPS_RANDOM_KEY}', for tests only, and are not LPIPS",
            stacklevel=2,
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
        try:
            net = lpips.LPIPS(
                net="alex", version="0.1", pretrained=True, pnet_rand=random_backbone, verbose=False
            )
        except (OSError, RuntimeError) as err:  # URLError is an OSError
            raise PretrainedWeightsMissing(alexnet_missing_message(str(err).splitlines()[0])) from None
    # lpips 0.1.4 leaves the linear heads trainable: freeze everything so DDP never treats them as parameters
    return net.eval().requires_grad_(False)


def lpips_distance(net: nn.Module, sr_255: Tensor, hr_255: Tensor) -> Tensor:
    """Per-image LPIPS of 8-bit images `(B, 3, H, W)` in [0, 255] (as saved), -> `(B,)` float64."""
    device = next(net.parameters()).device
    to_unit = 2.0 / 255.0  # lpips expects RGB in [-1, 1]
    sr = (sr_255 * to_unit - 1.0).to(device, torch.float32)
    hr = (hr_255 * to_unit - 1.0).to(device, torch.float32)
    with torch.no_grad():
        return net(sr, hr).reshape(-1).to(torch.float64)


def default_nrqm_path() -> Path:
    """pyiqa's own cache location for the NRQM model: `$TORCH_HOME/hub/pyiqa/NRQM_model.mat`."""
    return Path(torch.hub.get_dir()) / "pyiqa" / NRQM_FILE


def build_nrqm(
    crop_border: int, model_path: str | Path | None, download: bool = False
) -> tuple[nn.Module | None, str | None]:
    """pyiqa's NRQM (Ma et al.) in the PIRM convention (Y of YCbCr, `crop_border` shaved) or the reason why not.

    Returns `(module, None)` or `(None, reason)`. Never raises for a missing package or model file: Ma and PI
    are optional and reported as unavailable. The model is fetched only with `download` (metrics.download).
    """
    try:
        from pyiqa.archs.nrqm_arch import NRQM
        from pyiqa.utils.download_util import load_file_from_url
    except ImportError as err:
        return None, f"pyiqa is not installed ({err}); {PI_EXTRA_HINT}"
    target = Path(model_path).expanduser() if model_path else default_nrqm_path()
    if not target.is_file() and not download:
        return None, (
            f"NRQM model {NRQM_FILE} not found at {target}; copy {NRQM_URL} there, set "
            "metrics.nrqm_model_path=FILE or metrics.download=true"
        )
    if not target.is_file():
        try:
            load_file_from_url(NRQM_URL, model_dir=str(target.parent), progress=False, file_name=target.name)
        except Exception as err:  # noqa: BLE001 - any download failure means "unavailable", with its text
            return None, (
                f"NRQM model {NRQM_FILE} not found at {target} and downloading {NRQM_URL} failed ({err}); "
                f"copy the file there or set metrics.nrqm_model_path"
            )
    try:
        module = NRQM(
            test_y_channel=True,
            color_space="ycbcr",
            crop_border=crop_border,
            pretrained_model_path=str(target),
        )
    except Exception as err:  # noqa: BLE001 - a corrupt model file is reported, not silently skipped
        return None, f"pyiqa NRQM could not load {target} ({type(err).__name__}: {err}); replace the file"
    return module.eval().requires_grad_(False), None


class LPIPSScore(PerImageMetric):
    """Mean per-image LPIPS (AlexNet v0.1) of the 8-bit SR against HR, uncropped; lower is better.

    The network is kept out of the module tree (no parameters, no checkpoint entries, no DDP buckets) and
    moved to the input's device on first use.
    """

    higher_is_better = False
    _net: nn.Module

    def __init__(self, net: nn.Module, **kwargs) -> None:
        super().__init__(**kwargs)
        object.__setattr__(self, "_net", net)  # deliberately not registered as a submodule

    def score(self, sr: Tensor, hr: Tensor) -> Tensor:
        net = self._net
        if next(net.parameters()).device != sr.device:
            net.to(sr.device)
        return lpips_distance(net, quantize_8bit(sr), quantize_8bit(hr))


class MaScore(PerImageMetric):
    """Mean per-image Ma et al. score (NRQM, pyiqa backend) of the SR images; higher is better."""

    higher_is_better = True
    _nrqm: nn.Module

    def __init__(self, nrqm: nn.Module, **kwargs) -> None:
        super().__init__(**kwargs)
        object.__setattr__(self, "_nrqm", nrqm)

    def score(self, sr: Tensor, hr: Tensor) -> Tensor:
        nrqm = self._nrqm
        nrqm.to(sr.device)
        with torch.no_grad():
            return nrqm(quantize_8bit(sr).to(torch.float32) / 255.0).reshape(-1).to(torch.float64)
