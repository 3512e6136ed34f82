"""storage/proteins.py: upsert by content hash, read back, statistics, all-or-nothing file imports."""

from __future__ import annotations

import pytest

from storage.db import Database
from storage.errors import ParseError
from storage.protein import Protein, ProteinFeature
from storage.proteins import (
    all_accessions,
    get_protein,
    get_proteins,
    import_files,
    import_proteins,
    iter_proteins,
    protein_stats,
)
from storage.swissprot import RecordError, parse_file


@pytest.fixture
def db():
    database = Database.open(":memory:")
    yield database
    database.close()


@pytest.fixture
def legacy(swissprot_dir) -> list[Protein]:
    return [p for p in parse_file(swissprot_dir / "sprot_legacy.dat.gz") if isinstance(p, Protein)]


def test_import_round_trips_every_field(db, legacy):
    result = import_proteins(db, legacy)
    assert result.counts() == {"imported": 191, "updated": 0, "unchanged": 0, "total": 191}
    stored = get_proteins(db, [p.accession for p in legacy])
    assert all(stored[p.accession] == p for p in legacy)
    assert get_protein(db, "P31946") == next(p for p in legacy if p.accession == "P31946")
    assert get_protein(db, "NOPE00") is None


def test_reimport_changes_nothing_and_a_changed_entry_replaces_its_features(db, legacy):
    import_proteins(db, legacy)
    before = db.query("select accession, updated_at, content_hash from proteins order by accession")
    again = import_proteins(db, legacy)
    assert again.counts() == {"imported": 0, "updated": 0, "unchanged": 191, "total": 191}
    assert db.query("select accession, updated_at, content_hash from proteins order by accession") == before

    original = get_protein(db, "P31946")
    changed = original.model_copy(update={
        "function": "Edited.",
        "features": (ProteinFeature(type="Binding site", start=5, end=5, ligand="ATP"),),
    })
    result = import_proteins(db, [changed])
    assert result.counts() == {"imported": 0, "updated": 1, "unchanged": 0, "total": 1}
    assert get_protein(db, "P31946") == changed
    assert db.execute("select count(*) from features where accession = 'P31946'").fetchone()[0] == 1
    assert protein_stats(db)["features"] == sum(len(p.features) for p in legacy) - len(original.features) + 1


def test_the_same_accession_twice_in_one_import(db, legacy):
    first = legacy[0]
    edited = first.model_copy(update={"protein_name": "Renamed"})
    result = import_proteins(db, [first, legacy[1], first, edited])
    assert result.counts() == {"imported": 2, "updated": 1, "unchanged": 1, "total": 4}
    assert get_protein(db, first.accession) == edited


def test_record_errors_are_collected_not_stored(db, legacy):
    error = RecordError("x.dat", "the sequence has '1' at residue 3", "P99999", 12)
    result = import_proteins(db, [legacy[0], error])
    assert result.errors == [error] and result.total == 1
    assert all_accessions(db) == [legacy[0].accession]


def test_reading_back(db, legacy):
    import_proteins(db, legacy)
    accessions = sorted(p.accession for p in legacy)
    assert all_accessions(db) == accessions
    assert [p.accession for p in iter_proteins(db)] == accessions
    wanted = [accessions[5], "MISSING", accessions[0]]
    assert [p.accession for p in iter_proteins(db, wanted)] == [accessions[5], accessions[0]]
    stats = protein_stats(db)
    assert stats["proteins"] == 191 and stats["features"] == 6802
    assert stats["by_type"]["Natural variant"] == 1929 and stats["by_type"]["Binding site"] == 190
    assert list(stats["by_type"].values()) == sorted(stats["by_type"].values(), reverse=True)


def test_import_files_is_all_or_nothing(db, swissprot_dir, tmp_path):
    import_files(db, [swissprot_dir / "sprot_sample.tsv"])
    broken = tmp_path / "broken.json"
    broken.write_text((swissprot_dir / "sprot_sample.json").read_text()[:30000])  # cut mid-entry
    with pytest.raises(ParseError, match="broken.json"):
        import_files(db, [swissprot_dir / "sprot_legacy.dat.gz", broken])
    assert protein_stats(db)["proteins"] == 6  # the legacy file's 191 were rolled back with it
