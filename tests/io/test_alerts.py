"""Alert packets (otrain.io.alerts): ZTF and Rubin packets written with fastavro, read back exactly."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from otrain.errors import DataError
from otrain.io.alerts import (
    Alert,
    BadPacket,
    iter_alerts,
    iter_content,
    packet_files,
    read_alert,
    sniff,
    sniff_file,
)
from otrain.io.cutouts import read_header, read_pixels
from otrain.simulate.packets import (
    PacketAlert,
    fits_stamp,
    rubin_record,
    rubin_schema,
    write_packets,
    ztf_record,
    ztf_schema,
)

PLANES = ("IMAGE", "TEMPLATE", "DIFF")


def _planes(seed: int, size: int = 63) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {plane: rng.normal(size=(size, size)).astype(np.float32) for plane in PLANES}


def _ztf(candid: int, object_id: str = "ZTF21abcdefg", seed: int = 0, **changes: object) -> PacketAlert:
    return PacketAlert(candid=candid, object_id=object_id, planes=_planes(seed), **changes)  # type: ignore[arg-type]


def _alerts(location: Path) -> list[Alert]:
    found = list(iter_alerts(location))
    assert all(isinstance(item, Alert) for item in found), found
    return found  # type: ignore[return-value]


def test_a_ztf_packet_gives_its_planes_ids_and_measurements_exactly(tmp_path: Path) -> None:
    alert = _ztf(1285423380015015016, mag=17.25, magerr=0.03, band="g", fwhm=2.2, ra=10.5, dec=-3.25, positive=False)
    write_packets(tmp_path / "one.avro", [ztf_record(alert)], ztf_schema())
    (read,) = _alerts(tmp_path / "one.avro")
    assert read.survey == "ztf"
    assert read.meta.candid == 1285423380015015016  # 19 digits, not through a float
    assert read.meta.group == read.meta.file == "ZTF21abcdefg"
    assert (read.meta.mag, read.meta.magerr, read.meta.filter) == (17.25, pytest.approx(0.03), "g")
    assert (read.meta.fwhm, read.meta.ra, read.meta.dec) == (pytest.approx(2.2), 10.5, -3.25)
    assert read.positive is False
    meta, pixels = read_alert(read, PLANES)
    assert pixels.shape == (63, 63, 3)
    for index, plane in enumerate(PLANES):
        np.testing.assert_array_equal(pixels[:, :, index], alert.planes[plane])
    assert meta.edge is False
    _, diff_only = read_alert(read)
    np.testing.assert_array_equal(diff_only[:, :, 0], alert.planes["DIFF"])


def test_a_packet_and_its_fits_cutout_give_the_planes_written(tmp_path: Path) -> None:
    alert = _ztf(1285423380015015017)
    write_packets(tmp_path / "one.avro", [ztf_record(alert)], ztf_schema())
    stamp = tmp_path / "diff.fits.gz"
    stamp.write_bytes(fits_stamp(alert.planes["DIFF"], compress=True))
    _, location = read_header(stamp)
    (read,) = _alerts(tmp_path / "one.avro")
    from_packet, from_file = read_alert(read)[1], read_pixels(stamp, location)
    np.testing.assert_array_equal(from_packet[:, :, 0], alert.planes["DIFF"])
    np.testing.assert_array_equal(from_file[:, :, 0], alert.planes["DIFF"])


@pytest.mark.parametrize("version", [None, "7.4"])
def test_a_rubin_packet_gives_its_ids_group_and_planes(tmp_path: Path, version: str | None) -> None:
    schema = rubin_schema(version)
    alert = PacketAlert(candid=170032915540099079, object_id=170032915540099070, planes=_planes(3, 30), mag=21.0)
    write_packets(tmp_path / "rubin.avro", [rubin_record(alert, schema)], schema)
    (read,) = _alerts(tmp_path / "rubin.avro")
    assert read.survey == "rubin"
    assert read.meta.candid == 170032915540099079
    assert read.meta.group == "170032915540099070"
    assert read.meta.mag == pytest.approx(21.0)
    meta, pixels = read_alert(read, ("DIFF", "IMAGE"))
    np.testing.assert_array_equal(pixels[:, :, 0], alert.planes["DIFF"])
    np.testing.assert_array_equal(pixels[:, :, 1], alert.planes["IMAGE"])
    assert meta.edge is False  # a Rubin cutout's size says nothing about an edge


def test_a_file_of_several_packets_names_each_after_the_first(tmp_path: Path) -> None:
    records = [ztf_record(_ztf(100 + index, f"ZTF21obj{index}", seed=index)) for index in range(3)]
    write_packets(tmp_path / "night.avro", records, ztf_schema(), codec="deflate")
    names = [alert.name for alert in _alerts(tmp_path / "night.avro")]
    where = str(tmp_path / "night.avro")
    assert names == [where, f"{where}#1", f"{where}#2"]
    # the codecs otrain decodes itself (null, deflate) and one left to fastavro's reader give the same
    for codec in ("null", "bzip2"):
        write_packets(tmp_path / f"{codec}.avro", records, ztf_schema(), codec=codec)
        again = _alerts(tmp_path / f"{codec}.avro")
        assert [alert.meta for alert in again] == [alert.meta for alert in _alerts(tmp_path / "night.avro")]
        assert [alert.cutouts for alert in again] == [alert.cutouts for alert in _alerts(tmp_path / "night.avro")]


def test_a_tarball_is_read_as_a_stream_in_archive_order_and_a_folder_by_content(tmp_path: Path) -> None:
    packets = tmp_path / "packets"
    packets.mkdir()
    for index in range(3):
        write_packets(packets / f"{index}.avro", [ztf_record(_ztf(200 + index, seed=index))], ztf_schema())
    (packets / "README").write_text("not a packet\n")
    night = tmp_path / "night.tar.gz"
    with tarfile.open(night, "w:gz") as archive:
        for index in (2, 0, 1):
            archive.add(packets / f"{index}.avro", arcname=f"night/{index}.avro")
        archive.add(packets / "README", arcname="night/README")
    assert [alert.meta.candid for alert in _alerts(night)] == [202, 200, 201]
    assert _alerts(night)[0].name == f"{night}/night/2.avro"
    # the names say nothing: a tarball called .dat and a packet called .txt are found by content
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "archive.dat").write_bytes(night.read_bytes())
    (folder / "packet.txt").write_bytes((packets / "0.avro").read_bytes())
    (folder / "notes.avro").write_text("not Avro at all\n")
    assert packet_files(folder) == [folder / "archive.dat", folder / "packet.txt"]
    assert [alert.meta.candid for alert in _alerts(folder)] == [202, 200, 201, 200]


def test_sniff_tells_the_formats_apart_from_their_first_bytes(tmp_path: Path) -> None:
    write_packets(tmp_path / "a", [ztf_record(_ztf(1))], ztf_schema())
    avro = (tmp_path / "a").read_bytes()
    stamp = fits_stamp(np.zeros((4, 4), np.float32), compress=False)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("a.avro")
        info.size = len(avro)
        archive.addfile(info, io.BytesIO(avro))
    assert sniff(avro) == "avro"
    assert sniff(gzip.compress(avro)) == "avro"  # and read as such:
    (tmp_path / "a.avro.gz").write_bytes(gzip.compress(avro))
    assert [alert.meta.candid for alert in _alerts(tmp_path / "a.avro.gz")] == [1]
    assert sniff(buffer.getvalue()[:4096]) == "tar"
    assert sniff(gzip.compress(buffer.getvalue())[:4096]) == "tar"
    assert sniff(stamp) == "fits"
    assert sniff(gzip.compress(stamp)[:4096]) == "fits"
    assert sniff(b"PAR1....") == "parquet"
    assert sniff(b"hello") is None
    assert sniff_file(tmp_path / "missing") is None


def test_bad_packets_are_reported_with_their_reason_and_nothing_else_is_lost(tmp_path: Path) -> None:
    good = [ztf_record(_ztf(300 + index, seed=index)) for index in range(4)]
    write_packets(tmp_path / "whole.avro", good, ztf_schema(), codec="deflate")
    content = (tmp_path / "whole.avro").read_bytes()
    # a file of two blocks cut in the second: the first block's packets are kept
    blocks = tmp_path / "blocks.avro"
    import fastavro

    with open(blocks, "wb") as stream:
        writer = fastavro.write.Writer(stream, fastavro.parse_schema(ztf_schema()), codec="deflate")
        writer.write(good[0])
        writer.flush()
        writer.write(good[1])
        writer.flush()
    cut = blocks.read_bytes()
    (tmp_path / "truncated.avro").write_bytes(cut[: len(cut) - 200])
    blocks.unlink()
    (tmp_path / "whole.avro").unlink()
    (tmp_path / "keep.avro").write_bytes(content)
    other = {"type": "record", "name": "other", "fields": [{"name": "x", "type": "int"}]}
    write_packets(tmp_path / "other.avro", [{"x": 1}], other)
    no_diff = _ztf(400)
    del no_diff.planes["DIFF"]
    not_fits = ztf_record(_ztf(401))
    not_fits["cutoutDifference"]["stampData"] = gzip.compress(b"this is not FITS" * 200)
    write_packets(tmp_path / "broken.avro", [ztf_record(no_diff), not_fits], ztf_schema())

    found = list(iter_alerts(tmp_path))
    bad = [item for item in found if isinstance(item, BadPacket)]
    alerts = [item for item in found if isinstance(item, Alert)]
    reasons = {Path(item.name.split("#")[0]).name: item.reason for item in bad}
    assert set(reasons) == {"other.avro", "truncated.avro"}
    assert "neither a ZTF nor a Rubin" in reasons["other.avro"]
    assert "truncated or damaged after 1 packet(s)" in reasons["truncated.avro"]
    assert all("\n" not in item.reason for item in bad)
    assert sorted(alert.meta.candid for alert in alerts) == [300, 300, 301, 302, 303, 400, 401]
    broken = {alert.meta.candid: alert for alert in alerts if alert.meta.candid in (400, 401)}
    with pytest.raises(DataError, match=r"broken\.avro:cutoutDifference: the packet has no such cutout"):
        read_alert(broken[400])
    with pytest.raises(DataError, match=r"broken\.avro#1:cutoutDifference"):
        read_alert(broken[401])
    with pytest.raises(DataError, match="no plane MASK"):
        read_alert(broken[401], ("MASK",))


def test_a_ztf_stamp_cut_at_the_ccd_edge_is_flagged_edge_and_planes_of_two_sizes_refused(tmp_path: Path) -> None:
    publisher = "ZTF (www.ztf.caltech.edu)"
    small = PacketAlert(candid=5, object_id="ZTF21edge", planes=_planes(5, 40), publisher=publisher)
    whole = PacketAlert(candid=7, object_id="ZTF21whole", planes=_planes(7, 63), publisher=publisher)
    simulated = PacketAlert(candid=8, object_id="SIM8", planes=_planes(8, 32))  # not ZTF's: no size rule
    mixed = _ztf(6)
    mixed.planes["TEMPLATE"] = mixed.planes["TEMPLATE"][:40, :40]
    records = [ztf_record(alert) for alert in (small, mixed, whole, simulated)]
    write_packets(tmp_path / "two.avro", records, ztf_schema())
    edge, different, full, other = _alerts(tmp_path / "two.avro")
    assert read_alert(edge)[0].edge is True
    assert read_alert(full)[0].edge is False
    assert read_alert(other)[0].edge is False
    # A whole ZTF stamp is read as the FITS cutouts made from ZTF's packets hold it: 62x62,
    # without its first row and column; a cut stamp, and another publisher's, as they are.
    assert_array_equal(read_alert(full, PLANES)[1], np.dstack([whole.planes[p][1:, 1:] for p in PLANES]))
    assert_array_equal(read_alert(edge)[1][:, :, 0], small.planes["DIFF"])
    assert_array_equal(read_alert(other)[1][:, :, 0], simulated.planes["DIFF"])
    not_ztf = PacketAlert(candid=9, object_id="SIM9", planes=_planes(9, 63))
    write_packets(tmp_path / "other.avro", [ztf_record(not_ztf)], ztf_schema())
    (unruled,) = _alerts(tmp_path / "other.avro")
    assert read_alert(unruled)[1].shape == (63, 63, 1)
    with pytest.raises(DataError, match="the planes differ in size"):
        read_alert(different, PLANES)


def test_packets_in_memory_read_as_their_file_and_tarball_do(tmp_path: Path) -> None:
    records = [ztf_record(_ztf(500 + index, f"ZTF21mem{index}", seed=index)) for index in range(3)]
    write_packets(tmp_path / "night.avro", records, ztf_schema(), codec="deflate")
    night = tmp_path / "night.tar.gz"
    with tarfile.open(night, "w:gz") as archive:
        archive.add(tmp_path / "night.avro", arcname="n/night.avro")
    for path in (tmp_path / "night.avro", night):
        from_file = _alerts(path)
        in_memory = list(iter_content(path.read_bytes(), "hdfs://nn/night"))
        assert [item.name for item in in_memory] == [
            item.name.replace(str(path), "hdfs://nn/night") for item in from_file
        ]
        assert [item.meta for item in in_memory] == [item.meta for item in from_file]  # type: ignore[union-attr]
    (bad,) = iter_content(b"hello", "hdfs://nn/notes")
    assert bad == BadPacket("hdfs://nn/notes", "hdfs://nn/notes: neither an Avro alert file nor a tarball of them")
    damaged = night.read_bytes()[:-300]
    *_, last = iter_content(damaged, "cut.tar.gz")
    assert isinstance(last, BadPacket)
    assert last.reason.startswith("cut.tar.gz: the archive is damaged")


def test_a_fifo_among_the_packets_is_passed_over_not_waited_on(tmp_path: Path) -> None:
    import os

    write_packets(tmp_path / "a.avro", [ztf_record(_ztf(9))], ztf_schema())
    os.mkfifo(tmp_path / "pipe")  # opening it to read would wait for a writer forever
    assert sniff_file(tmp_path / "pipe") is None
    assert packet_files(tmp_path) == [tmp_path / "a.avro"]
