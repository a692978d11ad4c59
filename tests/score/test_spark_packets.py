"""otrain-infer-spark on alert packets: Avro files, tarballs and Fink's Parquet tables, real Spark (local[2])."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from astropy.io import ascii as astropy_ascii
from conftest import call_main, write_stdpipe

from otrain.cli.infer import main as infer_main
from otrain.cli.infer_spark import main as spark_main
from otrain.io.outputs import INFER_COLUMNS
from otrain.simulate.packets import PacketAlert, rubin_record, rubin_schema, write_packets, ztf_record, ztf_schema

pyarrow = pytest.importorskip("pyarrow")
pyarrow_parquet = pytest.importorskip("pyarrow.parquet")

MASTER = "local[2]"
#: 19-digit candidate ids, beyond a float's exact integers.
FIRST_CANDID = 2_400_000_000_000_000_001
#: The candidate fields and the stamp fields a Fink table holds (among many others).
CANDIDATE_FIELDS = ("jd", "fid", "magpsf", "sigmapsf", "fwhm", "ra", "dec", "xpos", "ypos", "isdiffpos")


def packet(index: int, size: int = 63) -> PacketAlert:
    """A ZTF alert, as ZTF publishes it, whose measurements a float32 holds exactly (as a FITS header gives them)."""
    rng = np.random.default_rng(index)
    planes = {plane: rng.normal(0.0, 10.0, (size, size)).astype(np.float32) for plane in ("IMAGE", "TEMPLATE", "DIFF")}
    return PacketAlert(
        candid=FIRST_CANDID + index,
        object_id=f"ZTF21aab{index:04d}",
        planes=planes,
        mag=17.0 + index / 4,
        magerr=0.0625,
        fwhm=2.5 + index / 8,
        ra=150.0 + index / 16,
        dec=-2.0 - index / 16,
        xpos=1000.5 + index,
        ypos=2000.25 - index,
        publisher="ZTF (www.ztf.caltech.edu)",  # a stamp under 63x63 is then cut at the CCD's edge (EDGE)
    )


def fits_twin(folder: Path, alert: PacketAlert, *, ztf: bool = True) -> None:
    """Write an alert's difference stamp and measurements as an STDPipe cutout.

    A whole ZTF stamp (63x63) goes in as the FITS cutouts made from ZTF's packets hold it:
    62x62, without its first row and column; Rubin's (``ztf`` False) as it is.
    """
    difference = alert.planes["DIFF"]
    write_stdpipe(
        folder / f"{alert.candid}.fits",
        difference[1:, 1:] if ztf and difference.shape == (63, 63) else difference,
        CANDID=alert.candid,
        mag_calib=alert.mag,
        mag_calib_err=alert.magerr,
        FWHM=alert.fwhm,
        RA=alert.ra,
        DEC=alert.dec,
        X=alert.xpos,
        Y=alert.ypos,
        FILE=str(alert.object_id),
    )


def fink_table(path: Path, records: list[dict[str, object]]) -> None:
    """Write ZTF packets as a Fink-style Parquet table: the packets' columns, the cutouts as stampData structs."""
    pa = pyarrow
    float_fields = {"jd", "ra", "dec"}
    candidate = pa.struct(
        [
            pa.field(
                name,
                pa.float64()
                if name in float_fields
                else pa.int32()
                if name == "fid"
                else pa.string()
                if name == "isdiffpos"
                else pa.float32(),
            )
            for name in CANDIDATE_FIELDS
        ]
    )
    stamp = pa.struct([pa.field("fileName", pa.string()), pa.field("stampData", pa.binary())])
    schema = pa.schema(
        [
            pa.field("objectId", pa.string()),
            pa.field("candid", pa.int64()),
            pa.field("candidate", candidate),
            pa.field("cutoutScience", stamp),
            pa.field("cutoutTemplate", stamp),
            pa.field("cutoutDifference", stamp),
            pa.field("cdsxmatch", pa.string()),
        ]
    )
    rows = [
        {
            "objectId": record["objectId"],
            "candid": record["candid"],
            "candidate": {name: record["candidate"][name] for name in CANDIDATE_FIELDS},  # type: ignore[index]
            "cutoutScience": record["cutoutScience"],
            "cutoutTemplate": record["cutoutTemplate"],
            "cutoutDifference": record["cutoutDifference"],
            "cdsxmatch": "Unknown",
        }
        for record in records
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    pyarrow_parquet.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def by_candid(rows: dict[str, dict[str, object]]) -> dict[str, dict[str, object]]:
    """Rows keyed by their candidate id, each with its file name."""
    keyed = {str(row["cand_ID"]): {**row, "filename": name} for name, row in rows.items()}
    assert len(keyed) == len(rows)
    return keyed


def read_parquet(folder: Path) -> dict[str, dict[str, object]]:
    table = pyarrow_parquet.read_table(folder)
    assert tuple(table.column_names) == INFER_COLUMNS
    return {row["filename"]: row for row in table.to_pylist()}


def read_table(path: Path) -> dict[str, dict[str, object]]:
    table = astropy_ascii.read(path, format="commented_header", guess=False)
    return {str(row["filename"]): {name: row[name] for name in INFER_COLUMNS} for row in table}


def assert_scored_as_twins(
    spark: dict[str, dict[str, object]], twins: dict[str, dict[str, object]], converted: tuple[str, ...] = ()
) -> None:
    """Each packet's row holds its twin's ids, metadata and P(real) (within 1e-6).

    The ``converted`` candidates' measurements went through a unit conversion (Rubin's fluxes in
    nJy, second moments): within 1e-5 of the twin's.
    """
    for candid, got in spark.items():
        expected = twins[candid]
        np.testing.assert_allclose(float(got["label1"]), float(expected["label1"]), atol=1e-6, err_msg=candid)
        assert int(got["real"]) == int(expected["real"]), candid
        for column in ("RA", "Dec", "Xpos", "Ypos", "mag", "magerr", "FWHM", "FWHMPSF"):
            value, wanted = (np.nan if row[column] is None else float(row[column]) for row in (got, expected))
            np.testing.assert_allclose(
                value, wanted, rtol=1e-5 if candid in converted else 0, err_msg=f"{candid} {column}"
            )
        assert got["originalFile"] == str(expected["originalFile"]), candid


@pytest.mark.slow
def test_packets_and_fink_tables_score_as_their_fits_twins(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = trained / "tiny.keras"
    alerts = [packet(index) for index in range(6)]
    folder = tmp_path / "night"
    (folder / "sub").mkdir(parents=True)
    # a file of three packets, a tarball of two (with a member that is not one), a FITS cutout
    write_packets(folder / "night.avro", [ztf_record(alert) for alert in alerts[:3]], ztf_schema(), codec="deflate")
    members = tmp_path / "members"
    members.mkdir()
    with tarfile.open(folder / "sub" / "archive.tar.gz", "w:gz") as archive:
        for alert in alerts[3:5]:
            write_packets(members / f"{alert.candid}.avro", [ztf_record(alert)], ztf_schema())
            archive.add(members / f"{alert.candid}.avro", arcname=f"n/{alert.candid}.avro")
        (members / "README").write_text("not a packet\n")
        archive.add(members / "README", arcname="n/README")
    twins = tmp_path / "twins"
    for alert in alerts:
        fits_twin(twins, alert)
    fits_twin(folder / "sub", alerts[5])  # a FITS cutout among the packets, read as today
    rubin = packet(10)
    rubin.object_id = 170032915540099070
    schema = rubin_schema()
    write_packets(folder / "sub" / "rubin.avro", [rubin_record(rubin, schema)], schema)
    fits_twin(twins, rubin, ztf=False)
    # an EDGE stamp, a packet without its difference stamp, one whose stamp is not FITS, files passed over
    no_diff, not_fits = ztf_record(packet(7)), ztf_record(packet(8))
    no_diff["cutoutDifference"] = None
    not_fits["cutoutDifference"]["stampData"] = b"this is not FITS" * 100
    write_packets(folder / "bad.avro", [ztf_record(packet(6, size=40)), no_diff, not_fits], ztf_schema())
    (folder / "notes.txt").write_text("not a packet\n")
    (folder / "empty.avro").write_bytes(b"")
    header = io.BytesIO()  # a tarball's start, then sparse: read as a stream from a local folder
    with tarfile.open(fileobj=header, mode="w") as archive:
        archive.add(folder / "night.avro", arcname="night.avro")
    for name, head in (("huge.tar", header.getvalue()[:4096]), ("frame.raw", b"")):
        with open(folder / "sub" / name, "wb") as stream:  # frame.raw: no packet, passed over unlisted
            stream.write(head)
            stream.truncate(2**31)

    reference = tmp_path / "twins.dat"
    assert call_main(infer_main, "--cutouts", twins, "--model", model, "--output", reference) == 0
    expected = by_candid(read_table(reference))
    capsys.readouterr()

    output = tmp_path / "packets.parquet"
    arguments = ("--model", model, "--master", MASTER, "--batch-size", 4)
    assert call_main(spark_main, "--cutouts", folder, "--output", output, *arguments) == 0
    captured = capsys.readouterr()
    rows = read_parquet(output)
    archive_name = folder / "sub" / "archive.tar.gz"
    assert sorted(rows) == sorted(
        [
            str(folder / "night.avro"),
            f"{folder / 'night.avro'}#1",
            f"{folder / 'night.avro'}#2",
            *(f"{archive_name}/n/{alert.candid}.avro" for alert in alerts[3:5]),
            str(folder / "sub" / f"{alerts[5].candid}.fits"),
            str(folder / "sub" / "rubin.avro"),
        ]
    )
    scored = by_candid(rows)
    assert sorted(scored) == sorted(str(alert.candid) for alert in [*alerts, rubin])  # 19 digits, exact
    assert_scored_as_twins(scored, expected, converted=(str(rubin.candid),))
    assert rows[str(folder / "night.avro")]["originalFile"] == "ZTF21aab0000"  # the object id
    assert "scored 7 of 11 cutouts" in captured.out
    assert "skipped 1 EDGE, 3 unreadable" in captured.out
    warnings = sorted(line for line in captured.err.splitlines() if "warning: skipped:" in line)
    assert len(warnings) == 3, captured.err
    prefix = f"otrain-infer-spark: warning: skipped: {folder / 'bad.avro'}"
    assert warnings[0] == f"{prefix}#1:cutoutDifference: the packet has no such cutout"
    assert warnings[1].startswith(f"{prefix}#2:cutoutDifference: "), warnings
    assert warnings[2].startswith(  # its member cut short at 4 kB
        f"otrain-infer-spark: warning: skipped: {folder / 'sub' / 'huge.tar'}/night.avro: not an Avro alert file ("
    )

    fink = tmp_path / "fink"
    broken = ztf_record(packet(9))
    broken["cutoutDifference"]["stampData"] = b"not FITS either" * 100
    cut = ztf_record(packet(10, size=40))  # a stamp ZTF cut at the CCD's edge: EDGE in a Fink table too
    fink_table(fink / "part-0.parquet", [ztf_record(alert) for alert in alerts[:5]] + [broken, cut])
    from_fink = tmp_path / "fink.parquet"
    assert call_main(spark_main, "--parquet", fink, "--output", from_fink, *arguments) == 0
    captured = capsys.readouterr()
    rows = read_parquet(from_fink)
    assert sorted(rows) == sorted(f"{fink}#{alert.candid}" for alert in alerts[:5])
    assert_scored_as_twins(by_candid(rows), expected)
    assert "scored 5 of 7 cutouts" in captured.out
    assert "skipped 1 EDGE, 1 unreadable" in captured.out
    (warning,) = [line for line in captured.err.splitlines() if "warning: skipped:" in line]
    assert warning.startswith(f"otrain-infer-spark: warning: skipped: {fink}#{FIRST_CANDID + 9}:cutoutDifference")


@pytest.mark.slow
def test_a_tarball_over_2_gib_scores_from_a_local_folder_and_is_named_when_spark_reads_the_bytes(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "night"
    folder.mkdir()
    first, second = packet(0), packet(1)
    write_packets(folder / "a.avro", [ztf_record(first)], ztf_schema())
    write_packets(tmp_path / "b.avro", [ztf_record(second)], ztf_schema())
    with tarfile.open(folder / "night.tar", "w") as archive:
        archive.add(tmp_path / "b.avro", arcname="n/b.avro")
    with open(folder / "night.tar", "r+b") as stream:
        stream.truncate(2**31)  # sparse: the archive's end blocks, up to 2 GiB
    arguments = ("--model", trained / "tiny.keras", "--master", MASTER, "--batch-size", 4)

    # A local folder: the executors open its files, and stream the tarball to its end blocks.
    assert call_main(spark_main, "--cutouts", folder, "--output", tmp_path / "local.parquet", *arguments) == 0
    rows = read_parquet(tmp_path / "local.parquet")
    assert sorted(rows) == [str(folder / "a.avro"), f"{folder / 'night.tar'}/n/b.avro"]
    assert "scored 2 of 2 cutouts" in capsys.readouterr().out

    # A URI: Spark's binaryFile reads the bytes, and no file over 2 GiB; the tarball is named.
    uri = folder.as_uri()
    assert call_main(spark_main, "--cutouts", uri, "--output", tmp_path / "uri.parquet", *arguments) == 0
    assert sorted(read_parquet(tmp_path / "uri.parquet")) == [str(folder / "a.avro")]
    captured = capsys.readouterr()
    assert "scored 1 of 2 cutouts" in captured.out
    assert (
        f"otrain-infer-spark: warning: skipped: {folder / 'night.tar'}: 2147483648 bytes, "
        "more than otrain-infer-spark reads as one piece (2 GiB); split it"
    ) in captured.err.splitlines()
