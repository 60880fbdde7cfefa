"""The Table 5 report: parameter and FLOP counts, ratios and the command line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dgggan_pl.complexity import (
    ComplexityRow,
    build_generator_from_config,
    complexity_rows,
    count_gflops,
    count_parameters,
    format_table,
    main,
)

# Independent measurements (2 x MACs, FlopCounterMode, 1x3x48x48; docs/models.md). DGGGAN's gradient
# operator is elementwise here, so it is not counted; the independent count took it as depthwise 3x3 convs
# (+0.016 GFLOPs), hence the tolerance.
EXPECTED = {
    "dgggan": (14_814_742, 84.73),
    "dgggan_lite": (3_708_174, 21.25),
    "no_grad": (7_370_475, 39.64),
    "no_se": (14_803_142, 84.73),
    "RRDBNet": (16_697_987, 82.61),
    "SPSR": (24_796_230, 241.46),
}


@pytest.fixture(scope="module")
def rows() -> list[ComplexityRow]:
    return complexity_rows((48, 48))


@pytest.fixture(scope="module")
def rows_48(rows: list[ComplexityRow]) -> dict[str, tuple[int, float]]:
    return {row.name: (row.params, row.gflops) for row in rows}


def test_rows_match_independent_counts(rows_48: dict[str, tuple[int, float]]) -> None:
    assert rows_48.keys() == EXPECTED.keys()
    for name, (params, gflops) in EXPECTED.items():
        assert rows_48[name][0] == params, name
        assert rows_48[name][1] == pytest.approx(gflops, abs=0.03), name


def test_flops_scale_with_lr_area(rows_48: dict[str, tuple[int, float]]) -> None:
    (row,) = complexity_rows((96, 48), names=["dgggan_lite"])
    assert row.gflops == pytest.approx(2 * rows_48["dgggan_lite"][1], rel=1e-3)


def test_bicubic_global_skip_adds_no_parameters_and_no_counted_flops() -> None:
    counts = []
    for skip in ("none", "bicubic"):
        with torch.device("meta"):
            generator = build_generator_from_config(
                ["model=dgggan_lite", f"model.generator.global_skip={skip}"]
            )
        assert generator.global_skip == skip
        counts.append((count_parameters(generator), count_gflops(generator, (48, 48))))
    assert counts[0] == counts[1] == (3_708_174, pytest.approx(21.25, abs=0.01))
    table = format_table(complexity_rows((8, 8), names=["dgggan_lite"]), (8, 8))
    assert "bicubic global skip, is not counted" in table


def test_table_has_ratios_to_both_references(
    rows: list[ComplexityRow], rows_48: dict[str, tuple[int, float]]
) -> None:
    table = format_table(rows, (48, 48))
    dgggan_line = next(line for line in table.splitlines() if line.startswith("| dgggan |"))
    ratio_rrdb = rows_48["dgggan"][1] / rows_48["RRDBNet"][1]
    ratio_spsr = rows_48["dgggan"][1] / rows_48["SPSR"][1]
    assert f"{ratio_rrdb:.3f}x" in dgggan_line and f"{ratio_spsr:.3f}x" in dgggan_line
    assert "1x3x48x48" in table


def test_table_without_references_prints_dashes() -> None:
    table = format_table(complexity_rows((8, 8), names=["dgggan_lite"]), (8, 8))
    assert "| dgggan_lite | 3,708,174 |" in table and "| - |" in table


def test_cli_prints_and_writes_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "sub" / "table5.md"
    main(["--lr-size", "8", "8", "--models", "dgggan_lite", "--output", str(output)])
    printed = capsys.readouterr().out
    assert output.read_text() == printed and "| dgggan_lite | 3,708,174 |" in printed
    assert list(output.parent.iterdir()) == [output]  # no temp file left behind


def test_unknown_model_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown model names"):
        complexity_rows((8, 8), names=["esrgan"])


def test_rrdbnet_row_is_spandrels_esrgan_at_64_filters_23_blocks(
    rows_48: dict[str, tuple[int, float]],
) -> None:
    """Table 5's ESRGAN row: our RRDBNet counts exactly as spandrel's ESRGAN (what released weights load as)."""
    pytest.importorskip("spandrel", reason="the optional extra `peers` (installed by `make install`)")
    from spandrel.architectures.ESRGAN import ESRGAN

    with torch.device("meta"):
        esrgan = ESRGAN(num_filters=64, num_blocks=23)
    assert count_parameters(esrgan) == rows_48["RRDBNet"][0] == 16_697_987
    assert count_gflops(esrgan, (48, 48)) == pytest.approx(rows_48["RRDBNet"][1], rel=1e-12)


def test_cli_counts_a_peer_from_its_weights_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("spandrel", reason="the optional extra `peers` (installed by `make install`)")
    from spandrel.architectures.ESRGAN import ESRGAN

    path = tmp_path / "tiny_esrgan.pth"
    torch.save(ESRGAN(num_filters=8, num_blocks=1).state_dict(), path)
    main(["--lr-size", "8", "8", "--models", f"spandrel:TinyESRGAN={path}", "dgggan_lite"])
    lines = capsys.readouterr().out.splitlines()
    tiny = next(line for line in lines if line.startswith("| TinyESRGAN |"))
    with torch.device("meta"):
        params = count_parameters(ESRGAN(num_filters=8, num_blocks=1))
    assert tiny.startswith(f"| TinyESRGAN | {params:,} |")
    with pytest.raises(SystemExit) as error:
        main(["--models", f"spandrel:Missing={tmp_path / 'missing.pth'}"])
    assert error.value.code == 2 and "missing.pth: weights file not found" in capsys.readouterr().err
