"""Image planes (--planes): reading, cubes, simulated triplets, training, scoring, params.yaml."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits
from conftest import ROOT, call_main, pixels, write_gmadet, write_stdpipe

from otrain.data.cutouts import read_cutout
from otrain.data.datacube import Datacube
from otrain.errors import DataError
from otrain.io.cutouts import read_header, read_header_with_astropy, read_pixels
from otrain.options import validate_params


def stdpipe_triplet(path: Path, size: int = 16) -> dict[str, np.ndarray]:
    """An STDPipe cutout whose IMAGE, TEMPLATE and DIFF planes hold different values."""
    planes = {name: pixels(size, seed=seed) for seed, name in enumerate(("IMAGE", "TEMPLATE", "DIFF"))}
    write_stdpipe(path, planes["DIFF"])
    with fits.open(path, mode="update") as hdul:
        hdul["IMAGE"].data = planes["IMAGE"]
        hdul["TEMPLATE"].data = planes["TEMPLATE"]
    return planes


@pytest.mark.parametrize("reader", [read_header, read_header_with_astropy])
def test_stdpipe_planes_are_stacked_in_the_order_asked(tmp_path: Path, reader: object) -> None:
    planes = stdpipe_triplet(tmp_path / "c.fits")
    for asked in (("IMAGE", "TEMPLATE", "DIFF"), ("DIFF", "IMAGE"), ("TEMPLATE",)):
        _, location = reader(tmp_path / "c.fits", asked)
        stacked = read_pixels(tmp_path / "c.fits", location)
        assert stacked.shape == (16, 16, len(asked))
        for channel, name in enumerate(asked):
            np.testing.assert_array_equal(stacked[:, :, channel], planes[name])
    _, default = reader(tmp_path / "c.fits")  # as O'TRAIN: the difference alone
    np.testing.assert_array_equal(read_pixels(tmp_path / "c.fits", default)[:, :, 0], planes["DIFF"])


@pytest.mark.parametrize("reader", [read_header, read_header_with_astropy])
def test_a_missing_plane_or_planes_of_other_sizes_name_the_file(tmp_path: Path, reader: object) -> None:
    stdpipe_triplet(tmp_path / "c.fits")
    with pytest.raises(DataError, match=r"c\.fits: no SCIENCE plane \(extensions: IMAGE, TEMPLATE, DIFF, MASK\)"):
        reader(tmp_path / "c.fits", ("SCIENCE", "DIFF"))
    with fits.open(tmp_path / "c.fits", mode="update") as hdul:
        hdul["IMAGE"].data = pixels(20)
    with pytest.raises(DataError, match=r"c\.fits: its planes differ in size \(16x16, 20x20\)"):
        reader(tmp_path / "c.fits", ("IMAGE", "DIFF"))


@pytest.mark.parametrize("reader", [read_header, read_header_with_astropy])
def test_gmadet_cutouts_give_their_planes_in_file_order(tmp_path: Path, reader: object) -> None:
    stack = np.stack([pixels(16, seed=seed) for seed in range(3)])
    write_gmadet(tmp_path / "three.fits", stack)
    _, location = reader(tmp_path / "three.fits", ("IMAGE", "TEMPLATE", "DIFF"))
    np.testing.assert_array_equal(read_pixels(tmp_path / "three.fits", location), np.moveaxis(stack, 0, -1))
    _, whole = reader(tmp_path / "three.fits")  # no planes named: the whole image, as O'TRAIN
    assert whole.height_width_channels == (16, 16, 3)
    with pytest.raises(DataError, match=r"three\.fits: holds 3 plane\(s\) in one image, --planes names 1 \(DIFF\)"):
        reader(tmp_path / "three.fits", ("DIFF",))
    write_gmadet(tmp_path / "one.fits")
    with pytest.raises(DataError, match=r"one\.fits: holds 1 plane\(s\) in one image, --planes names 3"):
        read_cutout(tmp_path / "one.fits", planes=("IMAGE", "TEMPLATE", "DIFF"))


def test_cubes_record_their_planes_and_old_cubes_keep_their_hash(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    columns = {
        "cube": rng.normal(size=(6, 8, 8, 3)).astype(np.float32),
        "labels": np.array([0, 1] * 3),
        "mags": np.full(6, 18.0),
        "errmags": np.full(6, 0.1),
        "filters": np.array(["r"] * 6),
        "fwhms": np.full(6, 2.0),
        "candids": np.arange(6),
    }
    cube = Datacube(**columns, planes=("IMAGE", "TEMPLATE", "DIFF"))
    loaded = Datacube.load(cube.save(tmp_path / "tri.npz"))
    assert loaded.planes == ("IMAGE", "TEMPLATE", "DIFF")
    assert loaded.subset(np.array([1, 2])).planes == loaded.planes
    assert loaded.content_hash() == cube.content_hash()
    unnamed = Datacube(**columns)
    assert Datacube.load(unnamed.save(tmp_path / "old.npz")).planes is None
    assert "planes" not in np.load(tmp_path / "old.npz").files  # as the original wrote it
    assert unnamed.content_hash() != cube.content_hash()
    with pytest.raises(ValueError, match="do not match the cube's 3 channel"):
        Datacube(**columns, planes=("DIFF",))


@pytest.mark.slow
def test_triplets_from_simulation_to_scoring(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One option through the whole chain: simulate, convert, train, infer with the card's planes."""
    from otrain.cli.convert import main as convert_main
    from otrain.cli.infer import main as infer_main
    from otrain.cli.simulate import main as simulate_main
    from otrain.cli.train import main as train_main

    triplet = ("--planes", "IMAGE", "TEMPLATE", "DIFF")
    sizes = ("--n-true", "60", "--n-false", "60", "--n-night", "12", "--cutout-size", "32")
    assert call_main(simulate_main, "--out", tmp_path / "survey", *sizes, *triplet) == 0
    night = sorted((tmp_path / "survey" / "night").glob("*.fits"))
    with fits.open(night[0]) as hdul:
        assert hdul[0].data.shape == (3, 32, 32)  # a gmadet cutout of three planes
    assert call_main(convert_main, "--path", tmp_path, "--cube", "tri", "--cutouts", tmp_path / "survey", *triplet) == 0
    cube = Datacube.load(tmp_path / "datacube" / "tri.npz")
    assert cube.cube.shape[1:] == (32, 32, 3)
    assert cube.planes == ("IMAGE", "TEMPLATE", "DIFF")
    options = ("--cube", tmp_path / "datacube" / "tri.npz", "--model-path", tmp_path, "--model-name", "tri")
    assert call_main(train_main, *options, "--epochs", "1", "--no-tracking") == 0
    model = tmp_path / "CNN_training" / "tri" / "tri.keras"
    assert json.loads(Path(f"{model}.card.json").read_text())["planes"] == ["IMAGE", "TEMPLATE", "DIFF"]
    capsys.readouterr()
    assert call_main(infer_main, "--cutouts", tmp_path / "survey" / "night", "--model", model, "--no-tracking") == 0
    out = capsys.readouterr().out
    assert f"of {len(night)} cutouts" in out
    assert "EDGE, 0 unreadable" in out
    # Fine-tuning needs the planes the model was trained on, in the same order.
    swapped = ("--planes", "TEMPLATE", "IMAGE", "DIFF")
    assert (
        call_main(convert_main, "--path", tmp_path, "--cube", "swapped", "--cutouts", tmp_path / "survey", *swapped)
        == 0
    )
    options = ("--cube", tmp_path / "datacube" / "swapped.npz", "--model-path", tmp_path, "--model-name", "swapped")
    capsys.readouterr()
    assert call_main(train_main, *options, "--epochs", "1", "--no-tracking", "--init-from", model) == 1
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(
            f"--init-from: {model} was trained on planes IMAGE TEMPLATE DIFF, this cube holds TEMPLATE IMAGE DIFF"
        )
    )
    # A night of differences alone: one mistake, one line naming the model and both shapes.
    plain = tmp_path / "plain"
    assert call_main(simulate_main, "--out", plain, "--n-true", "0", "--n-false", "0", "--n-night", "5") == 0
    first = sorted((plain / "night").glob("*.fits"))[0]
    assert call_main(infer_main, "--cutouts", plain / "night", "--model", model, "--no-tracking") == 1
    assert capsys.readouterr().err == (
        f"otrain-infer: error: {model}: the model takes 32x32x3 cutouts (planes IMAGE TEMPLATE DIFF), but "
        f"{first.name} (and probably the others in its folder) is 64x64x1\n"
    )
    assert not (plain / "night" / "infer_results.dat").exists()
    # A few cutouts without the planes among triplets are skipped and counted, with the reason.
    shutil.copy(first, tmp_path / "survey" / "night" / "zz_difference_only.fits")
    table = tmp_path / "mixed.dat"
    night_folder = tmp_path / "survey" / "night"
    assert call_main(infer_main, "--cutouts", night_folder, "--model", model, "--output", table, "--no-tracking") == 0
    captured = capsys.readouterr()
    assert "EDGE, 1 unreadable" in captured.out
    assert "zz_difference_only.fits: holds 1 plane(s) in one image" in captured.err
    assert call_main(infer_main, "--cutouts", plain / "night", "--model", model, "--planes", "DIFF") == 1
    assert capsys.readouterr().err.strip().endswith("the model takes 3 plane(s), --planes names 1 (DIFF)")


def test_the_pipeline_takes_its_planes_from_one_section() -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert params["images"] == {"planes": ["DIFF"]}
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for stage in ("simulate", "convert"):
        assert "${images}" in stages[stage]["cmd"]
        assert "images" in stages[stage]["params"]
    params["images"]["planes"] = ["IMAGE", "TEMPLATE", "DIFF"]
    assert validate_params(params)["images"] == {"planes": ["IMAGE", "TEMPLATE", "DIFF"]}
    for bad, rule in ((["DIFF", "DIFF"], "names a plane twice"), (["SCIENCE"], "Input should be 'IMAGE'")):
        params["images"]["planes"] = bad
        with pytest.raises(ValueError, match=f"params.yaml: images.planes.*{rule}"):
            validate_params(params)
    params["images"]["planes"] = ["DIFF"]
    params["convert"]["planes"] = ["DIFF"]  # set once, in images: never per stage
    with pytest.raises(ValueError, match=r"params\.yaml: convert\.planes"):
        validate_params(params)


def test_dvc_renders_the_planes_into_both_commands(tmp_path: Path) -> None:
    """What `dvc exp run -S 'images.planes=[IMAGE,TEMPLATE,DIFF]'` runs: DVC's own rendering."""
    import subprocess

    from conftest import BIN
    from dvc.repo import Repo

    for name in ("dvc.yaml", "params.yaml"):
        (tmp_path / name).write_text((ROOT / name).read_text())
    subprocess.run([str(BIN / "dvc"), "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["images"]["planes"] = ["IMAGE", "TEMPLATE", "DIFF"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    commands = {stage.name: stage.cmd for stage in Repo(str(tmp_path)).index.stages}
    for stage in ("simulate", "convert"):
        assert commands[stage].endswith(" --planes IMAGE TEMPLATE DIFF"), commands[stage]


def test_cutouts_without_the_planes_asked_say_which_plane_is_missing(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Same shape, other planes: the one line says what differs, not two equal shapes."""
    from otrain.cli.infer import main as infer_main

    for index in range(3):
        image, diff = fits.ImageHDU(pixels(32), name="IMAGE"), fits.ImageHDU(pixels(32, seed=index), name="DIFF")
        fits.HDUList([fits.PrimaryHDU(), image, diff]).writeto(tmp_path / f"c{index}.fits")
    model = trained / "tiny.keras"
    options = ("--cutouts", tmp_path, "--model", model, "--planes", "TEMPLATE", "--no-tracking")
    assert call_main(infer_main, *options) == 1
    assert capsys.readouterr().err == (
        f"otrain-infer: error: {model}: the model takes 32x32x1 cutouts (planes TEMPLATE), but c0.fits (and probably "
        "the others in its folder) is 32x32x1 (no TEMPLATE plane (extensions: IMAGE, DIFF))\n"
    )
