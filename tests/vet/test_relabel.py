"""otrain-relabel: a vetting page's marks CSV to a labelled tree, read back by a real otrain-convert."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import call_main, files_under, pixels, write_gmadet, write_stdpipe
from numpy.testing import assert_array_equal

from otrain.cli.convert import main as convert_main
from otrain.cli.relabel import main as relabel_main
from otrain.data.datacube import Datacube
from otrain.options import RELABEL_MARKER

HEADER = "cand_ID,file,mark,p_real"
#: The cutouts of the candidates, by path relative to the cutouts folder, and their CANDID.
CANDIDATES = {
    "c1.fits": 1,
    "c2.fits": 2,
    "c3.fits": 3,
    "c4.fits": 4,
    "night2/c5.fits": 5,
    "night2/deep/c6.fits": 6,
}


@pytest.fixture
def cutouts(tmp_path: Path) -> Path:
    """A scored night as the vetting page sees it: gmadet cutouts, one STDPipe one, sub-folders."""
    root = tmp_path / "night"
    for name, candid in CANDIDATES.items():
        if name == "c4.fits":
            write_stdpipe(root / name, pixels(16, seed=candid), NAME=str(candid))
        else:
            write_gmadet(root / name, pixels(16, seed=candid), CANDID=candid)
    old = 1_600_000_000
    for path in root.rglob("*.fits"):
        os.utime(path, (old, old))  # an mtime a copy that does not keep times would change
    return root


def state(folder: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file of a folder with its bytes, mtime and inode (to prove nothing was moved or changed)."""
    return {
        path.relative_to(folder).as_posix(): (path.read_bytes(), path.stat().st_mtime_ns, path.stat().st_ino)
        for path in folder.rglob("*")
        if path.is_file()
    }


def write_marks(path: Path, *lines: str, header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
    return path


def relabel(marks: Path, cutouts: Path, out: Path, *extra: str) -> int:
    return call_main(relabel_main, "--marks", marks, "--cutouts", cutouts, "--out", out, *extra)


def marker(out: Path) -> dict:
    return json.loads((out / RELABEL_MARKER).read_text())


def tree(out: Path) -> set[str]:
    """The files of a tree, marker left out."""
    return {path.relative_to(out).as_posix() for path in files_under(out)} - {RELABEL_MARKER}


def convert(tree_root: Path, base: Path) -> Datacube:
    """Run the real otrain-convert on a tree (every cutout kept) and load its cube."""
    code = call_main(
        convert_main, "--path", base, "--cube", "vetted", "--cutouts", tree_root, "--frac-true", "-1", "--workers", "1"
    )
    assert code == 0
    return Datacube.load(base / "datacube" / "vetted.npz")


# -----------------------------------------------------------------------------------------------
# What it writes


@pytest.mark.parametrize("mode", ["copy", "symlink", "hardlink"])
def test_each_mode_makes_a_tree_that_otrain_convert_reads(
    tmp_path: Path, cutouts: Path, mode: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = state(cutouts)
    # The columns in another order than the page writes them, plus one it does not.
    marks = write_marks(
        tmp_path / "marks.csv",
        "real,0.91,c1.fits,1,looks fine",
        "bogus,0.40,c2.fits,2,dipole",
        "skip,0.55,c3.fits,3,",
        "real,0.88,c4.fits,4,",
        "bogus,0.12,night2/c5.fits,5,",
        "real,0.97,night2/deep/c6.fits,6,",
        header="mark,p_real,file,cand_ID,comment",
    )
    out = tmp_path / "vetted"
    assert relabel(marks, cutouts, out, "--mode", mode) == 0
    assert capsys.readouterr().out == f"3 real -> {out}/true, 2 bogus -> {out}/false, 1 skipped (mode {mode})\n"
    assert tree(out) == {"true/c1.fits", "true/c4.fits", "true/c6.fits", "false/c2.fits", "false/c5.fits"}
    for written in files_under(out) - {out / RELABEL_MARKER}:
        source = cutouts / marker(out)["files"][written.parent.name][written.name]
        assert written.read_bytes() == source.read_bytes()
        if mode == "copy":
            assert not written.is_symlink()
            assert written.stat().st_ino != source.stat().st_ino
            assert written.stat().st_mtime_ns == source.stat().st_mtime_ns  # copy2 keeps the times
        elif mode == "symlink":
            assert written.is_symlink()
            target = Path(os.readlink(written))
            assert target.is_absolute()
            assert target == source
        else:
            assert not written.is_symlink()
            assert written.stat().st_ino == source.stat().st_ino
            assert source.stat().st_nlink == 2
    assert {name: (data, mtime) for name, (data, mtime, _) in state(cutouts).items()} == {
        name: (data, mtime) for name, (data, mtime, _) in before.items()
    }
    assert {name: inode for name, (_, _, inode) in state(cutouts).items()} == {
        name: inode for name, (_, _, inode) in before.items()
    }

    cube = convert(out, tmp_path / "cube")  # the marker at the root of the tree does not disturb it
    assert dict(zip(cube.candids.tolist(), cube.labels.tolist(), strict=True)) == {1: 1, 4: 1, 6: 1, 2: 0, 5: 0}
    assert_array_equal(cube.cube[cube.candids.tolist().index(6), :, :, 0], pixels(16, seed=6))


def test_marker_records_the_run(tmp_path: Path, cutouts: Path) -> None:
    marks = write_marks(tmp_path / "marks.csv", "1,c1.fits,real,0.9", "5,night2/c5.fits,bogus,0.2", "3,c3.fits,skip,")
    out = tmp_path / "vetted"
    assert relabel(marks, cutouts, out, "--mode", "symlink") == 0
    record = marker(out)
    assert record["command"] == "otrain-relabel"
    assert (record["marks"], record["cutouts"], record["mode"]) == (str(marks), str(cutouts), "symlink")
    assert record["counts"] == {"real": 1, "bogus": 1, "skipped": 1}
    assert record["files"] == {"true": {"c1.fits": "c1.fits"}, "false": {"c5.fits": "night2/c5.fits"}}


def test_skip_is_no_label_and_repeated_marks_merge(
    tmp_path: Path, cutouts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marks = write_marks(
        tmp_path / "marks.csv",
        "1,c1.fits,skip,0.5",
        "1,c1.fits,real,0.5",  # skipped first, then judged: real
        "2,c2.fits,bogus,0.3",
        "2,c2.fits,skip,0.3",  # judged, then skipped: still bogus
        "3,c3.fits,real,0.9",
        "3,./c3.fits,real,0.9",  # the same file twice, spelled two ways: one copy
        "4,c4.fits,skip,0.5",
        "4,c4.fits,skip,0.5",  # skipped twice: one skipped file
    )
    out = tmp_path / "vetted"
    assert relabel(marks, cutouts, out) == 0
    assert "2 real -> " in capsys.readouterr().out
    assert tree(out) == {"true/c1.fits", "true/c3.fits", "false/c2.fits"}
    assert marker(out)["counts"] == {"real": 2, "bogus": 1, "skipped": 1}


def test_a_spreadsheet_resave_is_read(tmp_path: Path, cutouts: Path) -> None:
    """A byte-order mark, CRLF line ends, quoted fields, blank lines, capitals and spaces around values."""
    marks = tmp_path / "marks.csv"
    text = '\ufeffcand_ID , file,mark ,p_real\r\n1,"c1.fits", Real ,0.9\r\n\r\n2,c2.fits,BOGUS,0.1\r\n'
    marks.write_bytes(text.encode("utf-8"))
    out = tmp_path / "vetted"
    assert relabel(marks, cutouts, out) == 0
    assert tree(out) == {"true/c1.fits", "false/c2.fits"}


def test_one_name_under_both_labels_is_allowed(tmp_path: Path, cutouts: Path) -> None:
    write_gmadet(cutouts / "night3" / "c1.fits", pixels(16, seed=31), CANDID=31)
    marks = write_marks(tmp_path / "marks.csv", "1,c1.fits,real,0.9", "31,night3/c1.fits,bogus,0.1")
    out = tmp_path / "vetted"
    assert relabel(marks, cutouts, out) == 0
    assert (out / "true" / "c1.fits").read_bytes() == (cutouts / "c1.fits").read_bytes()
    assert (out / "false" / "c1.fits").read_bytes() == (cutouts / "night3" / "c1.fits").read_bytes()


def test_only_real_marks_leave_an_empty_false_folder_and_a_warning(
    tmp_path: Path, cutouts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marks = write_marks(tmp_path / "marks.csv", "1,c1.fits,real,0.9")
    out = tmp_path / "vetted"
    assert relabel(marks, cutouts, out) == 0
    assert (out / "false").is_dir()
    assert not any((out / "false").iterdir())
    assert "no file is marked bogus" in capsys.readouterr().err


# -----------------------------------------------------------------------------------------------
# --out: new, empty, its own earlier output; nothing else


def test_an_empty_folder_and_its_own_output_are_replaced(tmp_path: Path, cutouts: Path) -> None:
    out = tmp_path / "vetted"
    out.mkdir()
    first = write_marks(tmp_path / "first.csv", "1,c1.fits,real,0.9", "2,c2.fits,bogus,0.2")
    assert relabel(first, cutouts, out, "--mode", "hardlink") == 0
    assert tree(out) == {"true/c1.fits", "false/c2.fits"}
    second = write_marks(tmp_path / "second.csv", "3,c3.fits,real,0.9", "5,night2/c5.fits,bogus,0.2")
    assert relabel(second, cutouts, out) == 0
    assert tree(out) == {"true/c3.fits", "false/c5.fits"}
    assert marker(out)["marks"] == str(second)
    assert marker(out)["mode"] == "copy"
    assert (cutouts / "c1.fits").stat().st_nlink == 1  # the old hard links went with the old tree
    assert sorted(path.name for path in tmp_path.iterdir()) == ["first.csv", "night", "second.csv", "vetted"]


@pytest.fixture
def marks(tmp_path: Path) -> Path:
    return write_marks(tmp_path / "marks.csv", "1,c1.fits,real,0.9", "2,c2.fits,bogus,0.1")


def refused(capsys: pytest.CaptureFixture[str], code: int, expected: int, text: str) -> None:
    error = capsys.readouterr().err
    assert code == expected, error
    assert error.startswith("otrain-relabel: error: ")
    assert error.count("\n") == 1
    assert text in error


def test_a_folder_it_did_not_write_is_refused(
    tmp_path: Path, cutouts: Path, marks: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mine"
    (out / "true").mkdir(parents=True)
    (out / "true" / "keep.fits").write_bytes(b"precious")
    refused(
        capsys, relabel(marks, cutouts, out), 2, "exists and was not written by otrain-relabel; choose another path"
    )
    assert tree(out) == {"true/keep.fits"}
    assert (out / "true" / "keep.fits").read_bytes() == b"precious"


def test_a_file_is_refused(tmp_path: Path, cutouts: Path, marks: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "vetted"
    out.write_text("not a folder")
    refused(capsys, relabel(marks, cutouts, out), 2, "exists and was not written by otrain-relabel")
    assert out.read_text() == "not a folder"


def test_a_symbolic_link_is_refused(
    tmp_path: Path, cutouts: Path, marks: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "elsewhere").mkdir()
    out = tmp_path / "vetted"
    out.symlink_to(tmp_path / "elsewhere")
    refused(capsys, relabel(marks, cutouts, out), 2, "exists and was not written by otrain-relabel")
    assert out.is_symlink()


def test_its_own_output_holding_other_files_is_refused(
    tmp_path: Path, cutouts: Path, marks: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cube converted into the tree (otrain-convert --path OUT) would go with a replacement."""
    out = tmp_path / "vetted"
    assert relabel(marks, cutouts, out) == 0
    convert(out, out)
    capsys.readouterr()
    again = write_marks(tmp_path / "again.csv", "3,c3.fits,real,0.9", "4,c4.fits,bogus,0.1")
    refused(capsys, relabel(again, cutouts, out), 2, "also holds 'datacube'")
    assert (out / "datacube" / "vetted.npz").is_file()
    assert tree(out) == {"true/c1.fits", "false/c2.fits", "datacube/vetted.npz"}


def test_a_forged_or_broken_marker_is_not_trusted(
    tmp_path: Path, cutouts: Path, marks: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "vetted"
    out.mkdir()
    (out / RELABEL_MARKER).write_text("{not json")
    refused(capsys, relabel(marks, cutouts, out), 2, "was not written by otrain-relabel")
    (out / RELABEL_MARKER).write_text(json.dumps({"command": "otrain-pack", "files": {}}))
    refused(capsys, relabel(marks, cutouts, out), 2, "was not written by otrain-relabel")
    assert tree(out) == set()


@pytest.mark.parametrize(
    ("where", "text"),
    [
        ("cutouts", "is --cutouts or inside it"),
        ("cutouts/labelled", "is --cutouts or inside it"),
        ("parent", "holds --cutouts"),
    ],
)
def test_out_may_not_overlap_the_cutouts(
    tmp_path: Path, cutouts: Path, marks: Path, capsys: pytest.CaptureFixture[str], where: str, text: str
) -> None:
    out = {"cutouts": cutouts, "cutouts/labelled": cutouts / "labelled", "parent": tmp_path}[where]
    before = state(tmp_path)
    refused(capsys, relabel(marks, cutouts, out), 2, text)
    assert state(tmp_path) == before


def test_marks_inside_out_are_refused(tmp_path: Path, cutouts: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "vetted"
    first = write_marks(tmp_path / "marks.csv", "1,c1.fits,real,0.9")
    assert relabel(first, cutouts, out) == 0
    capsys.readouterr()
    inside = write_marks(out / "marks.csv", "2,c2.fits,real,0.9")
    refused(capsys, relabel(inside, cutouts, out), 2, "--marks: ")
    assert inside.is_file()
    assert tree(out) == {"true/c1.fits", "marks.csv"}


@pytest.mark.parametrize(
    ("option", "value", "text"),
    [
        ("--mode", "move", "--mode: "),
        ("--marks", "absent.csv", "--marks: file"),
        ("--cutouts", "absent", "--cutouts: folder"),
    ],
)
def test_bad_options(
    tmp_path: Path, cutouts: Path, marks: Path, capsys: pytest.CaptureFixture[str], option: str, value: str, text: str
) -> None:
    options = {"--marks": str(marks), "--cutouts": str(cutouts), "--out": str(tmp_path / "new" / "vetted")}
    options[option] = str(tmp_path / value) if option != "--mode" else value
    code = call_main(relabel_main, *[item for pair in options.items() for item in pair])
    refused(capsys, code, 2, text)
    assert not (tmp_path / "new").exists()


def test_help_lists_the_modes(capsys: pytest.CaptureFixture[str]) -> None:
    assert call_main(relabel_main, "--help") == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: otrain-relabel --marks PATH --cutouts PATH --out PATH")
    assert "--mode {copy,symlink,hardlink}  (default: copy)" in text


# -----------------------------------------------------------------------------------------------
# Bad marks: one line naming the file (and the line), exit 1, nothing written


@pytest.mark.parametrize(
    ("content", "text"),
    [
        (b"cand_ID,file,mark,p_real\n1,c\xe9.fits,real,0.9\n", "not UTF-8 text (byte 28"),
        (b"", "no header line"),
        (b"\n\n", "no header line"),
        (b"cand_ID,filename,mark\n1,c1.fits,real\n", "the header lacks the columns file, p_real"),
        (b"cand_ID,file,mark,p_real\n1,c1.fits,real,0.9\n2,c2.fits,maybe,0.1\n", "line 3: mark 'maybe'"),
        (b"cand_ID,file,mark,p_real\n1,c1.fits,,0.9\n", "line 2: mark ''"),
        (b"cand_ID,file,mark,p_real\n1,c1.fits\n", "line 2: mark ''"),
        (b"cand_ID,file,mark,p_real\n1,,real,0.9\n", "line 2: empty file name"),
        (b"cand_ID,file,mark,p_real\n1,CUTOUTS/c1.fits,real,0.9\n", "line 2: 'CUTOUTS/c1.fits' is an absolute path"),
        (
            b"cand_ID,file,mark,p_real\n1,night2/../../x.fits,real,0.9\n",
            "line 2: 'night2/../../x.fits' leaves the --cutouts folder",
        ),
        (b"cand_ID,file,mark,p_real\n1,c1.png,real,0.9\n", "line 2: 'c1.png' is not a FITS cutout"),
        (b'cand_ID,file,mark,p_real\n1,"c1.fits,real,0.9\n', "line 2: not valid CSV"),
        (
            b"cand_ID,file,mark,p_real\n1,c1.fits,real,0.9\n2,c2.fits,bogus,0.1\n1,c1.fits,bogus,0.9\n",
            "c1.fits is marked real (line 2) and bogus (line 4)",
        ),
        (b"cand_ID,file,mark,p_real\n", "no real or bogus mark (0 file(s) skipped)"),
        (b"cand_ID,file,mark,p_real\n1,c1.fits,skip,0.9\n2,c2.fits,skip,0.1\n", "no real or bogus mark (2 file(s)"),
    ],
)
def test_bad_marks_are_one_line_and_write_nothing(
    tmp_path: Path, cutouts: Path, capsys: pytest.CaptureFixture[str], content: bytes, text: str
) -> None:
    marks = tmp_path / "marks.csv"
    marks.write_bytes(content.replace(b"CUTOUTS", str(cutouts).encode()))
    text = text.replace("CUTOUTS", str(cutouts))
    out = tmp_path / "new" / "vetted"
    refused(capsys, relabel(marks, cutouts, out), 1, f"{marks}: {text}")
    assert not (tmp_path / "new").exists()


def test_missing_files_are_counted_and_the_first_named(
    tmp_path: Path, cutouts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = ["1,c1.fits,real,0.9", *(f"{n},gone/m{n}.fits,bogus,0.1" for n in range(7)), "3,c3.fits,skip,0.5"]
    marks = write_marks(tmp_path / "marks.csv", *lines)
    out = tmp_path / "vetted"
    refused(capsys, relabel(marks, cutouts, out), 1, "7 marked files not found under")
    assert not out.exists()
    (cutouts / "missing.fits").mkdir()  # a folder is not a cutout
    marks = write_marks(
        tmp_path / "marks.csv", "1,c1.fits,real,0.9", "9,missing.fits,skip,0.1", "9,missing.fits,real,0.1"
    )
    refused(capsys, relabel(marks, cutouts, out), 1, f"1 marked file not found under {cutouts}: missing.fits")
    assert not out.exists()


def test_the_first_five_missing_files_are_named(
    tmp_path: Path, cutouts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marks = write_marks(tmp_path / "marks.csv", *(f"{n},gone/m{n}.fits,bogus,0.1" for n in range(7)))
    assert relabel(marks, cutouts, tmp_path / "vetted") == 1
    error = capsys.readouterr().err
    assert "gone/m0.fits, gone/m1.fits, gone/m2.fits, gone/m3.fits, gone/m4.fits, ..." in error
    assert "m5.fits" not in error


def test_two_files_with_one_name_in_one_label_folder(
    tmp_path: Path, cutouts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_gmadet(cutouts / "night3" / "c1.fits", pixels(16, seed=31), CANDID=31)
    marks = write_marks(tmp_path / "marks.csv", "1,c1.fits,real,0.9", "31,night3/c1.fits,real,0.8")
    out = tmp_path / "vetted"
    refused(capsys, relabel(marks, cutouts, out), 1, "c1.fits and night3/c1.fits are both marked real")
    assert not out.exists()


@pytest.fixture
def other_file_system(tmp_path: Path) -> Iterator[Path]:
    """A folder on another file system than tmp_path (/dev/shm), where hard links cannot reach."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on another file system than the temporary folder")
    folder = Path(tempfile.mkdtemp(dir=shm, prefix="otrain-relabel-test-"))
    yield folder
    shutil.rmtree(folder)


def test_hardlink_across_file_systems_suggests_copy(
    tmp_path: Path, other_file_system: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cutouts = other_file_system / "night"
    write_gmadet(cutouts / "c1.fits", pixels(16, seed=1), CANDID=1)
    write_gmadet(cutouts / "c2.fits", pixels(16, seed=2), CANDID=2)
    marks = write_marks(tmp_path / "marks.csv", "1,c1.fits,real,0.9", "2,c2.fits,bogus,0.1")
    out = tmp_path / "new" / "vetted"
    refused(capsys, relabel(marks, cutouts, out, "--mode", "hardlink"), 1, "use --mode copy")
    assert not (tmp_path / "new").exists()
    assert relabel(marks, cutouts, out, "--mode", "copy") == 0
    assert tree(out) == {"true/c1.fits", "false/c2.fits"}


# -----------------------------------------------------------------------------------------------
# --include: the vetted candidates join an existing training set


def training_set(root: Path, first_candid: int, n_true: int, n_false: int) -> Path:
    """A labelled folder as otrain-convert reads it; CANDIDs from ``first_candid`` on (true first)."""
    candid = first_candid
    for label, count in (("true", n_true), ("false", n_false)):
        (root / label).mkdir(parents=True)
        for _ in range(count):
            write_gmadet(root / label / f"t{candid}.fits", pixels(16, seed=candid), CANDID=candid)
            candid += 1
    return root


@pytest.fixture
def training(tmp_path: Path) -> Path:
    """A training set of 3 true and 2 false cutouts (CANDID 101-105), with what convert does not read."""
    root = training_set(tmp_path / "train", 101, 3, 2)
    write_gmadet(root / "true" / "older" / "t199.fits", pixels(16, seed=199), CANDID=199)  # a sub-folder
    (root / "true" / "notes.txt").write_text("not a cutout")
    write_gmadet(root / "unsorted" / "t198.fits", pixels(16, seed=198), CANDID=198)  # neither true/ nor false/
    return root


@pytest.mark.parametrize("n_folders", [1, 2])
@pytest.mark.parametrize("mode", ["copy", "symlink", "hardlink"])
def test_included_folders_join_the_vetted_cutouts(
    tmp_path: Path, cutouts: Path, training: Path, mode: str, n_folders: int, capsys: pytest.CaptureFixture[str]
) -> None:
    folders = [training, training_set(tmp_path / "train2", 201, 1, 2)][:n_folders]
    before = {folder: state(folder) for folder in folders}
    marks = write_marks(tmp_path / "marks.csv", "1,c1.fits,real,0.9", "2,c2.fits,bogus,0.2", "3,c3.fits,skip,0.5")
    out = tmp_path / "vetted"
    options = [item for folder in folders for item in ("--include", folder)]  # the option given several times
    assert relabel(marks, cutouts, out, "--mode", mode, *options) == 0

    summary = f"1 real -> {out}/true, 1 bogus -> {out}/false, 1 skipped, + 3 true, 2 false from {training}"
    if n_folders == 2:
        summary += f", + 1 true, 2 false from {tmp_path / 'train2'}"
    assert capsys.readouterr().out == f"{summary} (mode {mode})\n"
    expected = {"true/c1.fits", "false/c2.fits", "true/t101.fits", "true/t102.fits", "true/t103.fits"}
    expected |= {"false/t104.fits", "false/t105.fits"}
    if n_folders == 2:
        expected |= {"true/t201.fits", "false/t202.fits", "false/t203.fits"}
    assert tree(out) == expected

    record = marker(out)
    assert record["counts"] == {"real": 1, "bogus": 1, "skipped": 1}
    assert (
        record["included"]
        == [
            {"folder": str(training), "counts": {"true": 3, "false": 2}},
            {"folder": str(tmp_path / "train2"), "counts": {"true": 1, "false": 2}},
        ][:n_folders]
    )
    assert record["files"]["true"]["c1.fits"] == "c1.fits"
    assert record["files"]["true"]["t101.fits"] == str(training / "true" / "t101.fits")
    for name in expected - {"true/c1.fits", "false/c2.fits"}:
        written = out / name
        source = Path(record["files"][written.parent.name][written.name])
        assert source.parent.name == written.parent.name  # from the label folder of the same name
        assert written.read_bytes() == source.read_bytes()
        if mode == "copy":
            assert not written.is_symlink()
            assert written.stat().st_ino != source.stat().st_ino
        elif mode == "symlink":
            assert Path(os.readlink(written)) == source
        else:
            assert written.stat().st_ino == source.stat().st_ino
    for folder in folders:
        assert {name: data for name, (data, _, _) in state(folder).items()} == {
            name: data for name, (data, _, _) in before[folder].items()
        }

    cube = convert(out, tmp_path / "cube")
    labels = {1: 1, 2: 0, 101: 1, 102: 1, 103: 1, 104: 0, 105: 0} | ({201: 1, 202: 0, 203: 0} if n_folders == 2 else {})
    assert dict(zip(cube.candids.tolist(), cube.labels.tolist(), strict=True)) == labels
    assert_array_equal(cube.cube[cube.candids.tolist().index(104), :, :, 0], pixels(16, seed=104))


def test_several_folders_after_one_include(tmp_path: Path, cutouts: Path, training: Path) -> None:
    other = training_set(tmp_path / "train2", 201, 1, 1)
    marks = write_marks(tmp_path / "marks.csv", "1,c1.fits,real,0.9")
    out = tmp_path / "vetted"
    assert relabel(marks, cutouts, out, "--include", training, other) == 0
    assert [entry["folder"] for entry in marker(out)["included"]] == [str(training), str(other)]
    assert {"true/t201.fits", "false/t202.fits", "true/t101.fits"} <= tree(out)


def test_a_vetted_file_already_in_the_training_set_with_its_label_is_one_entry(
    tmp_path: Path, cutouts: Path, training: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (training / "true" / "again.fits").symlink_to(cutouts / "c1.fits")  # the same file as vetted c1.fits
    os.link(cutouts / "c2.fits", training / "false" / "c2.fits")  # and c2.fits, by a hard link
    marks = write_marks(tmp_path / "marks.csv", "1,c1.fits,real,0.9", "2,c2.fits,bogus,0.1")
    out = tmp_path / "vetted"
    assert relabel(marks, cutouts, out, "--include", training) == 0
    assert capsys.readouterr().out.startswith(
        f"1 real -> {out}/true, 1 bogus -> {out}/false, 0 skipped, + 3 true, 2 false from {training} "
    )
    assert "true/again.fits" not in tree(out)
    assert marker(out)["files"]["false"]["c2.fits"] == "c2.fits"  # kept as the vetted file
    cube = convert(out, tmp_path / "cube")
    assert sorted(cube.candids.tolist()) == [1, 2, 101, 102, 103, 104, 105]


def test_the_vetting_may_not_contradict_the_training_label(
    tmp_path: Path, cutouts: Path, training: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    os.link(cutouts / "c1.fits", training / "false" / "c1-old.fits")
    marks = write_marks(tmp_path / "marks.csv", "2,c2.fits,bogus,0.1", "1,c1.fits,real,0.9")
    out = tmp_path / "new" / "vetted"
    refused(
        capsys,
        relabel(marks, cutouts, out, "--include", training),
        1,
        f"{cutouts}/c1.fits and {training}/false/c1-old.fits (one file): marked real on line 3 of {marks}, "
        f"but labelled false in --include {training}: the vetting contradicts the training label",
    )
    assert not (tmp_path / "new").exists()


def test_one_file_in_two_included_folders_with_opposite_labels(
    tmp_path: Path, cutouts: Path, training: Path, marks: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = training_set(tmp_path / "train2", 201, 1, 1)
    (other / "false" / "t101.fits").symlink_to(training / "true" / "t101.fits")
    out = tmp_path / "new" / "vetted"
    refused(
        capsys,
        relabel(marks, cutouts, out, "--include", training, "--include", other),
        1,
        f"{training}/true/t101.fits and {other}/false/t101.fits (one file): labelled true in --include {training}, "
        f"but labelled false in --include {other}: one file cannot be both",
    )
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("clash", ["vetted", "included"])
def test_one_name_from_two_sources_in_one_label_folder(
    tmp_path: Path, cutouts: Path, training: Path, marks: Path, capsys: pytest.CaptureFixture[str], clash: str
) -> None:
    if clash == "vetted":  # the training set holds another c1.fits in true/, where vetted c1.fits goes
        write_gmadet(training / "true" / "c1.fits", pixels(16, seed=41), CANDID=41)
        folders: tuple[Path, ...] = (training,)
        first, second = f"{cutouts}/c1.fits (marked real on line 2 of {marks})", f"{training}/true/c1.fits"
        target = "true/c1.fits"
    else:
        other = training_set(tmp_path / "train2", 104, 0, 1)  # another t104.fits, in false/ as the first one
        folders = (training, other)
        first, second = f"{training}/false/t104.fits (labelled false", f"{other}/false/t104.fits (labelled false"
        target = "false/t104.fits"
    out = tmp_path / "new" / "vetted"
    code = relabel(marks, cutouts, out, *[item for folder in folders for item in ("--include", folder)])
    error = capsys.readouterr().err
    assert code == 1, error
    assert error.count("\n") == 1
    assert f"{first}" in error
    assert f" and {second}" in error
    assert f"would both be {out}/{target}; rename one of them" in error
    assert not (tmp_path / "new").exists()


def test_a_new_run_with_includes_replaces_its_own_output(tmp_path: Path, cutouts: Path, training: Path) -> None:
    out = tmp_path / "vetted"
    marks = write_marks(tmp_path / "marks.csv", "1,c1.fits,real,0.9")
    assert relabel(marks, cutouts, out, "--include", training, "--mode", "symlink") == 0
    again = write_marks(tmp_path / "again.csv", "2,c2.fits,bogus,0.1")
    assert relabel(again, cutouts, out, "--include", training) == 0
    assert tree(out) == {
        "false/c2.fits",
        "true/t101.fits",
        "true/t102.fits",
        "true/t103.fits",
        *(f"false/t{candid}.fits" for candid in (104, 105)),
    }
    assert not any(path.is_symlink() for path in files_under(out))


def test_include_does_not_replace_the_marks(
    tmp_path: Path, cutouts: Path, training: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marks = write_marks(tmp_path / "marks.csv", "1,c1.fits,skip,0.9")
    out = tmp_path / "new" / "vetted"
    refused(capsys, relabel(marks, cutouts, out, "--include", training), 1, "no real or bogus mark (1 file(s) skipped)")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    ("case", "text"),
    [
        ("no true/", "--include: INCLUDE/true: folder of true cutouts does not exist (expected INCLUDE/true and "),
        ("no false/", "--include: INCLUDE/false: folder of false cutouts does not exist (expected "),
        ("absent", "--include: folder 'INCLUDE' does not exist"),
        ("twice", "--include: 'TMP/alias' is given twice (as 'INCLUDE')"),
        ("out is it", "--out: 'INCLUDE' is --include 'INCLUDE' or inside it; choose another path"),
        ("out inside", "--out: 'INCLUDE/true/vetted' is --include 'INCLUDE' or inside it"),
        ("out holds it", "--out: 'TMP/sets' holds --include 'INCLUDE' and would be replaced whole"),
    ],
)
def test_bad_includes_are_option_errors(
    tmp_path: Path, cutouts: Path, training: Path, marks: Path, capsys: pytest.CaptureFixture[str], case: str, text: str
) -> None:
    include, out, extra = training, tmp_path / "new" / "vetted", ()
    if case == "no true/":
        shutil.rmtree(training / "true")
    elif case == "no false/":
        shutil.rmtree(training / "false")
    elif case == "absent":
        include = tmp_path / "absent"
    elif case == "twice":
        (tmp_path / "alias").symlink_to(training)
        extra = ("--include", tmp_path / "alias")
    elif case == "out is it":
        out = training
    elif case == "out inside":
        out = training / "true" / "vetted"
    elif case == "out holds it":
        include = training_set(tmp_path / "sets" / "train", 301, 1, 1)
        out = tmp_path / "sets"
    before = state(tmp_path)
    code = relabel(marks, cutouts, out, "--include", include, *extra)
    refused(capsys, code, 2, text.replace("INCLUDE", str(include)).replace("TMP", str(tmp_path)))
    assert state(tmp_path) == before
    assert not (tmp_path / "new").exists()


def test_help_describes_include(capsys: pytest.CaptureFixture[str]) -> None:
    assert call_main(relabel_main, "--help") == 0
    text = capsys.readouterr().out
    assert "--include PATH [PATH ...]  (default: none)" in text
    assert "may be given several times" in text
