"""Options of the commands that make and move data: otrain-simulate, -convert, -relabel and -pack."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, model_validator

from otrain.io.markers import RELABEL_MARKER, has_marker, read_marker
from otrain.options.base import (
    CommandConfig,
    CutoutSize,
    ExistingFile,
    ExistingFolder,
    NonNegativeInt,
    OnDisk,
    Planes,
    PositiveInt,
    Probability,
    Seed,
    WritableFolder,
    _at_least_sixteen,
    _cube_name,
    _frac_true,
    _held_files,
    _keyword_name,
    _unique_planes,
    _writable_folder,
    option,
)

__all__ = [
    "RELABEL_FOLDERS",
    "SIMULATE_OUTPUTS",
    "ConvertConfig",
    "PackConfig",
    "RelabelConfig",
    "SimulateConfig",
    "relabel_output_files",
]


#: What otrain-simulate writes into --out, and replaces only with --overwrite.
SIMULATE_OUTPUTS = ("true", "false", "night", "truth.csv", "night_alerts.tar.gz")


class SimulateConfig(CommandConfig):
    """Write the built-in synthetic survey: labelled true/false cutouts, a night of candidates.

    The survey is deterministic from --seed. Real candidates are point sources (Moffat PSF,
    varied seeing, sub-pixel offsets, magnitudes down to and below the detection limit,
    sometimes on a galaxy-subtraction residual); bogus ones are subtraction dipoles,
    PSF-mismatch rings, cosmic rays, hot pixels and bad columns, saturated-star residuals with
    bleed trails, noise peaks and masked edges. Outputs: <out>/true, <out>/false, <out>/night
    (with <out>/night/crossmatch.dat) and <out>/truth.csv; with --night-packets, the night also
    as ZTF alert packets in <out>/night_alerts.tar.gz.
    """

    command: ClassVar[str] = "otrain-simulate"

    out: WritableFolder = option(..., "Folder to write the survey into.")
    n_true: NonNegativeInt = option(1500, "Number of labelled real cutouts (true/).")
    n_false: NonNegativeInt = option(1500, "Number of labelled bogus cutouts (false/).")
    n_night: NonNegativeInt = option(300, "Number of unlabelled candidates of the simulated night (night/).")
    cutout_size: Annotated[int, AfterValidator(_at_least_sixteen)] = option(
        64, "Cutout width and height in pixels, at least 16 (gmadet uses 64)."
    )
    seed: Seed = option(42, "Seed of every random draw; the same seed gives the same files.")
    planes: Annotated[tuple[Literal["IMAGE", "TEMPLATE", "DIFF"], ...], AfterValidator(_unique_planes)] = option(
        ("DIFF",),
        "Planes of the gmadet-style cutouts (and the night), in file order: DIFF alone is a 2-D difference image; "
        "several (IMAGE TEMPLATE DIFF) make a (C, H, W) image. STDPipe-style cutouts always carry all three.",
    )
    mef_fraction: Probability = option(
        0.25, "Fraction of labelled cutouts written STDPipe-style (multi-extension, DIFF plane); the rest gmadet-style."
    )
    night_packets: bool = option(
        False,
        "Also write the night as ZTF alert packets (Avro, schema 3.3), one file each in <out>/night_alerts.tar.gz; "
        "candidates flagged EDGE are left out.",
    )
    overwrite: bool = option(
        False, "Replace a survey that otrain-simulate wrote in --out (only the files it listed in truth.csv)."
    )
    workers: PositiveInt | None = option(None, "Worker processes for writing files (default: one per core).")

    @classmethod
    def check_option_rules(cls, values: dict[str, Any]) -> None:
        """At least one cutout must be asked for."""
        if values["n_true"] + values["n_false"] + values["n_night"] == 0:
            raise ValueError("--n-true, --n-false, --n-night: at least one must be positive")

    @model_validator(mode="after")
    def _check(self) -> SimulateConfig:
        self.check_option_rules(self.__dict__)
        return self

    def check_disk(self) -> None:
        """Refuse to replace a survey without --overwrite, or files otrain-simulate did not write."""
        clashing = [name for name in SIMULATE_OUTPUTS if (self.out / name).exists()]
        if clashing and not self.overwrite:
            raise ValueError(
                f"--out: {str(self.out)!r} already holds a survey ({', '.join(clashing)}); "
                "pass --overwrite to replace it"
            )
        if clashing and not has_marker(self.out, "otrain-simulate"):
            raise ValueError(
                f"--out: {str(self.out)!r} holds {', '.join(clashing)} that otrain-simulate did not write; "
                "refusing to replace them, choose another folder"
            )

    def output_folders(self) -> list[Path]:
        """Return the survey folder."""
        return [self.out]


def _existing_path(path: Path) -> Path:
    if not path.exists():
        raise ValueError(f"{str(path)!r} does not exist")
    return path


#: A file or a folder that exists.
ExistingPath = Annotated[Path, OnDisk(_existing_path)]


class ConvertConfig(CommandConfig):
    """Convert labelled cutouts (<cutouts>/true, <cutouts>/false) into one training datacube.

    Reads gmadet single-HDU and STDPipe multi-extension cutouts (.fits, .fit, .fits.gz), or
    ZTF and Rubin alert packets (--alerts) labelled by a CSV of candid,label (--labels),
    drops cutouts flagged EDGE, replaces non-finite pixels, centre-crops to --cutout-size, then
    balances the classes to --frac-true with a seeded random selection and writes
    <path>/datacube/<cube>.npz.
    """

    command: ClassVar[str] = "otrain-convert"

    path: WritableFolder = option(
        ..., "Base folder; the cube is written to <path>/datacube/<cube>.npz.", aliases=("path", "path_datacube")
    )
    cube: Annotated[str, AfterValidator(_cube_name)] = option(..., "Name of the datacube, without extension.")
    cutouts: ExistingFolder | None = option(
        None, "Folder holding the true/ and false/ sub-folders of labelled cutouts (or give --alerts)."
    )
    alerts: ExistingPath | None = option(
        None,
        "Alert packets instead of --cutouts: an Avro packet file, a .tar/.tar.gz nightly archive, or a folder of "
        "them; each packet's object id (objectId, diaObjectId) is its group.",
    )
    labels: ExistingFile | None = option(
        None,
        "With --alerts: CSV whose header names candid and label (1 real, 0 bogus); packets it does not list are "
        "left out.",
    )
    frac_true: Annotated[float, AfterValidator(_frac_true)] = option(
        0.5, "Fraction of real cutouts in the cube, in (0, 1); -1 keeps every cutout, unbalanced."
    )
    cutout_size: CutoutSize = option(-1, "Centre-crop every cutout to NxN pixels; -1 keeps the full size.")
    planes: Planes = option(
        None,
        "Image planes stacked as channels, in order: extensions of STDPipe cutouts (IMAGE TEMPLATE DIFF: "
        "science, reference, difference); a gmadet cutout gives its planes in file order and must hold as many. "
        "Default: DIFF of STDPipe cutouts, the whole image of gmadet ones (as O'TRAIN).",
    )
    group_keyword: Annotated[str, AfterValidator(_keyword_name)] | None = option(
        None,
        "Store this primary-header keyword's value per cutout as its group (for example FILE, the ZTF objectId in "
        "STDPipe cutouts of ZTF alerts), so that otrain-cross-validate keeps each group in one fold. A cutout "
        "without it is a bad file. Not with --alerts, whose packets' object ids are the groups.",
    )
    seed: Seed = option(42, "Seed of the random balancing selection.")
    skip_bad_files: bool = option(False, "Skip unreadable or incomplete cutouts with a warning instead of failing.")
    overwrite: bool = option(False, "Replace an existing cube of the same name.")
    workers: PositiveInt | None = option(None, "Worker processes reading the files (default: one per core).")

    @model_validator(mode="after")
    def _check(self) -> ConvertConfig:
        # Not in check_option_rules: params.yaml holds none of these paths (dvc.yaml sets them).
        if self.cutouts is None and self.alerts is None:
            raise ValueError("--cutouts: required option is missing")
        if self.cutouts is not None and self.alerts is not None:
            raise ValueError("--cutouts, --alerts: give one or the other")
        if self.alerts is not None and self.labels is None:
            raise ValueError("--labels: required with --alerts (a CSV of candid,label)")
        if self.alerts is None and self.labels is not None:
            raise ValueError("--labels: only used with --alerts (the labels of --cutouts are its true/ and false/)")
        if self.alerts is not None and self.group_keyword is not None:
            raise ValueError(
                "--group-keyword: not used with --alerts: each packet's object id (objectId, diaObjectId) is its group"
            )
        return self

    def check_disk(self) -> None:
        """Check that the cube's folder can be written and that the cube is not there (without --overwrite)."""
        try:
            _writable_folder(self.output_file.parent)
        except ValueError as error:
            raise ValueError(f"--path: {error}") from None
        if not self.overwrite and self.output_file.exists():
            raise ValueError(f"--cube: {str(self.output_file)!r} already exists; pass --overwrite to replace it")

    @property
    def output_file(self) -> Path:
        """The cube this conversion writes: ``<path>/datacube/<cube>.npz``."""
        return self.path / "datacube" / f"{self.cube}.npz"

    def output_folders(self) -> list[Path]:
        """Return the cube's folder."""
        return [self.output_file.parent]


#: The label folders of an otrain-relabel output (those otrain-convert reads), by mark.
RELABEL_FOLDERS = {"real": "true", "bogus": "false"}


def relabel_output_files(folder: Path) -> set[str] | None:
    """Return what an otrain-relabel output folder holds by its marker, or None if it has no valid marker.

    Parameters
    ----------
    folder : Path
        An existing folder.

    Returns
    -------
    set of str or None
        The paths relative to ``folder`` (with ``/``) of the marker, the label folders and the
        files the marker lists in them; None when the marker is missing or is not one that
        otrain-relabel writes.
    """
    marker = read_marker(folder, "otrain-relabel")
    listed = marker.get("files") if marker is not None else None
    if not isinstance(listed, dict):
        return None
    names = {RELABEL_MARKER, *RELABEL_FOLDERS.values()}
    for label in RELABEL_FOLDERS.values():
        held = listed.get(label, {})
        if not isinstance(held, Iterable):
            return None
        names |= {f"{label}/{name}" for name in held}
    return names


class RelabelConfig(CommandConfig):
    """Turn the marks exported from a vetting page (a CSV) into a labelled tree <out>/true, <out>/false.

    Reads the columns cand_ID, file, mark and p_real (in any order; others are ignored): each
    file (relative to --cutouts) marked real goes to <out>/true, bogus to <out>/false, skip
    nowhere. A file marked skip and also real or bogus takes that label; a file marked both
    real and bogus is an error. --include adds the labelled cutouts of existing training
    folders (their true/ and false/), so that the vetted candidates join a training set. The
    tree is ready for otrain-convert --cutouts <out>; it is written all at once, with a
    _otrain_relabel.json record of what it holds, and replaces only an earlier otrain-relabel
    output. The cutouts themselves are never moved or changed.
    """

    command: ClassVar[str] = "otrain-relabel"

    marks: ExistingFile = option(..., "The marks CSV of the vetting page (its 'Export marks' button).")
    cutouts: ExistingFolder = option(
        ..., "Folder the marks' file names are relative to (the folder the vetting page was made from)."
    )
    out: Path = option(
        ...,
        "Folder to write <out>/true and <out>/false into: a new or empty folder, or an earlier otrain-relabel output "
        "(replaced whole).",
    )
    mode: Literal["copy", "symlink", "hardlink"] = option(
        "copy",
        "How each cutout gets into the tree: copy (bytes and times), symlink (absolute links to the originals) or "
        "hardlink (same file system only).",
    )
    include: tuple[ExistingFolder, ...] = option(
        (),
        "Also put the labelled cutouts of this folder (its true/ and false/ sub-folders, as otrain-convert reads "
        "them) into the tree, the same way (--mode); may be given several times.",
    )

    def check_disk(self) -> None:
        """Check that --out is new, empty or an earlier otrain-relabel output, away from every input."""
        out, cutouts = self.out.resolve(), self.cutouts.resolve()
        if out == cutouts or cutouts in out.parents:
            raise ValueError(f"--out: {str(self.out)!r} is --cutouts or inside it; choose another path")
        if out in cutouts.parents:
            raise ValueError(
                f"--out: {str(self.out)!r} holds --cutouts {str(self.cutouts)!r} and would be replaced whole; "
                "choose another path"
            )
        seen: dict[Path, Path] = {}
        for folder in self.include:
            resolved = folder.resolve()
            if resolved in seen:
                raise ValueError(f"--include: {str(folder)!r} is given twice (as {str(seen[resolved])!r})")
            seen[resolved] = folder
            for label in RELABEL_FOLDERS.values():
                if not (folder / label).is_dir():
                    raise ValueError(
                        f"--include: {folder / label}: folder of {label} cutouts does not exist "
                        f"(expected {folder}/true and {folder}/false)"
                    )
            if out == resolved or resolved in out.parents:
                raise ValueError(
                    f"--out: {str(self.out)!r} is --include {str(folder)!r} or inside it; choose another path"
                )
            if out in resolved.parents:
                raise ValueError(
                    f"--out: {str(self.out)!r} holds --include {str(folder)!r} and would be replaced whole; "
                    "choose another path"
                )
        if out in self.marks.resolve().parents:
            raise ValueError(
                f"--marks: {str(self.marks)!r} is inside --out, which is replaced whole; choose another --out"
            )
        not_ours = f"--out: {str(self.out)!r} exists and was not written by otrain-relabel; choose another path"
        if self.out.is_symlink() or (self.out.exists() and not self.out.is_dir()):
            raise ValueError(not_ours)
        if self.out.is_dir() and any(self.out.iterdir()):
            own = relabel_output_files(self.out)
            if own is None:
                raise ValueError(not_ours)
            foreign = [name for name in _held_files(self.out) if name not in own]
            if foreign:
                raise ValueError(
                    f"--out: {str(self.out)!r} was written by otrain-relabel but now also holds {foreign[0]!r}"
                    f"{f' and {len(foreign) - 1} more' if len(foreign) > 1 else ''}, which replacing it would "
                    "delete; move them or choose another path"
                )
        try:
            _writable_folder(self.out.parent)
        except ValueError as error:
            raise ValueError(f"--out: {error}") from None

    def output_folders(self) -> list[Path]:
        """Return the output's parent folder."""
        return [self.out.parent]


def _parquet_output(config: CommandConfig, output: Path, inputs: Sequence[Path] = ()) -> None:
    """Refuse an existing --output folder unless --overwrite is given and the folder is otrain's Parquet.

    ``inputs`` are the command's input folders: the output may be neither one of them nor inside one.
    """
    for folder in inputs:
        if output.resolve() == folder.resolve() or folder.resolve() in output.resolve().parents:
            raise ValueError(
                f"--output: {str(output)!r} is the input {str(folder)!r} or inside it; choose another path"
            )
    if output.is_symlink():
        raise ValueError(f"--output: {str(output)!r} is a symbolic link; give the folder itself, or another path")
    if not output.exists():
        try:
            _writable_folder(output.parent)
        except ValueError as error:
            raise ValueError(f"--output: {error}") from None
        return
    # Whose it is first: --overwrite would not replace a user's file, so it is no advice then.
    # (otrain-pack and otrain-infer-spark write the same marker; its presence is what counts.)
    if not output.is_dir() or not has_marker(output, "otrain-pack"):
        raise ValueError(
            f"--output: {str(output)!r} exists and is not a Parquet folder written by otrain (it is never replaced, "
            "even with --overwrite); choose another path"
        )
    if not getattr(config, "overwrite", False):
        raise ValueError(f"--output: {str(output)!r} exists; pass --overwrite to replace it, or choose another path")


class PackConfig(CommandConfig):
    """Pack a folder of candidate cutouts into Parquet files, for otrain-infer-spark --parquet.

    Each cutout becomes one row: the metadata columns of infer_results.dat (filename RA Dec
    originalFile Xpos Ypos mag magerr FWHM FWHMPSF cand_ID), its EDGE flag, and its planes as
    float32 pixels, centre-cropped to --cutout-size but otherwise raw (non-finite pixels are
    replaced when scoring, as otrain-infer does). An unreadable file becomes a row holding the
    error, so the scoring run counts and lists it. --output is a folder of part files.
    """

    command: ClassVar[str] = "otrain-pack"

    cutouts: ExistingFolder = option(..., "Folder of candidate cutouts (*.fits, *.fit, *.fits.gz).")
    output: Path = option(..., "Output folder of Parquet part files (appears complete or not at all).")
    planes: Planes = option(
        None,
        "Image planes to pack, in channel order (see otrain-convert). Default: DIFF of STDPipe cutouts and the "
        "whole image of gmadet ones; it must match the planes the scoring model takes.",
    )
    cutout_size: CutoutSize = option(
        -1, "Centre-crop size in pixels (at least the model's input size); -1 keeps the full cutouts."
    )
    recursive: bool = option(False, "Also pack cutouts in sub-folders.")
    workers: PositiveInt | None = option(None, "Worker processes reading the files (default: one per core).")
    overwrite: bool = option(False, "Replace an existing --output folder (only one otrain wrote).")

    def check_disk(self) -> None:
        """Check that --output is not an input and is new, or otrain's Parquet folder with --overwrite."""
        _parquet_output(self, self.output, [self.cutouts])

    def output_folders(self) -> list[Path]:
        """Return the output's parent folder."""
        return [self.output.parent]
