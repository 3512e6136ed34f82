"""Real UniProt files beyond the shared data (tests/data/uniprot_other, from Biopython's test suite):
they all parse, and an entry read from its flat file and from its XML file is the same protein.

The shared files have no accession (nor sequence) in common, so the cross-format check uses these
pairs: the same UniProt release of the same entries, exported as flat file and as XML.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from storage.protein import Protein
from storage.swissprot import RecordError, detect_format, parse_file

OTHER = Path(__file__).parent / "data" / "uniprot_other"
FILES = sorted(p.name for p in OTHER.iterdir() if p.name != "NOTICE.md")
PAIRS = [("multi_ex.txt", "multi_ex.xml.gz"), ("Q13639.txt", "Q13639.xml"), ("F2CXE6.txt", "F2CXE6.xml"),
         ("H2CNN8.txt", "H2CNN8.xml")]


def _proteins(name: str) -> dict[str, Protein]:
    items = list(parse_file(OTHER / name, on_warning=lambda message: None))
    assert not [i for i in items if isinstance(i, RecordError)]
    return {p.accession: p for p in items}  # type: ignore[union-attr]


@pytest.mark.parametrize("name", FILES)
def test_other_real_files_parse(name):
    proteins = _proteins(name)
    assert proteins
    for protein in proteins.values():
        assert protein.length == len(protein.sequence)
        assert protein.sequence.isalpha() and protein.sequence.isupper()


@pytest.mark.parametrize("name", FILES)
def test_other_real_files_import(name, workspace, cli):
    result = cli("swissprot", "import", OTHER / name, "--workspace", workspace.root, "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["imported"] == result.json()["total"] == len(_proteins(name))


@pytest.mark.parametrize(("flat", "xml"), PAIRS)
def test_same_entry_in_flat_and_xml_is_the_same_protein(flat, xml):
    assert detect_format(OTHER / flat) == "flat" and detect_format(OTHER / xml) == "xml"
    from_flat, from_xml = _proteins(flat), _proteins(xml)
    assert from_flat.keys() == from_xml.keys()
    for accession, protein in from_flat.items():
        assert protein.features == from_xml[accession].features, accession
        assert protein == from_xml[accession], accession


def test_cross_format_pairs_cover_the_legacy_cases():
    """The pairs are worth comparing: they hold NP_BIND, status qualifiers, fuzzy ends and variants."""
    proteins = _proteins("multi_ex.txt")
    features = [f for p in proteins.values() for f in p.features]
    kinds = Counter(f.type for f in features)
    assert kinds["Binding site"] == 6 and kinds["Disulfide bond"] == 22 and kinds["Alternative sequence"] == 6
    binding = [f for f in features if f.type == "Binding site"]  # NP_BIND  41  48  ATP (Potential).
    assert Counter((f.ligand, f.evidence) for f in binding) == {("ATP", ("ECO:0000255",)): 5,
                                                                ("FAD", ("ECO:0000250",)): 1}
    assert any(f.start is None and f.start_modifier == "?" for f in features)
    assert any(f.end_modifier == ">" for f in features)
    tpa = proteins["P00750"]
    assert [f.description for f in tpa.features if f.type == "Alternative sequence"][1] == (
        "VICRDEKTQMIYQQHQSWLRPVLRSNRVEYCWCNSGRAQCHSVPVKS -> G (in isoform 3)")  # wrapped over two lines
    receptor = _proteins("Q13639.txt")["Q13639"]
    assert [f.description for f in receptor.features if f.type == "Alternative sequence"][0] == (
        "L -> LERSLNQGLGQDFHA (in isoform 5-HT4(F))")  # "5-" / "HT4(F))" joined without a space


def test_old_id_and_description_lines():
    sp012 = _proteins("sp012")["Q9Y736"]  # ID   Q9Y736  PRELIMINARY;  PRT;  153 AA.  /  DE   UBIQUITIN.
    assert (sp012.entry_name, sp012.length, sp012.protein_name) == ("Q9Y736", 153, "UBIQUITIN")
    fos = _proteins("sp016")["P01100"]  # DE   Proto-oncogene protein c-fos (Cellular oncogene fos) (...).
    assert fos.protein_name == "Proto-oncogene protein c-fos"
    trembl = _proteins("F2CXE6.txt")["F2CXE6"]  # SubName, evidence braces on OX and KW lines
    assert (trembl.protein_name, trembl.taxon_id) == ("Plasma membrane intrinsic protein", 112509)
    assert trembl.keywords == ("Membrane", "Transmembrane", "Transport")


def test_metal_key_in_the_2019_syntax():
    # FT   METAL   47   /note="Iron-sulfur (2Fe-2S); via pros nitrogen"
    ferredoxin = _proteins("P0A186.txt")["P0A186"]
    metal = [f for f in ferredoxin.features if f.type == "Binding site" and f.start == 47][0]
    assert (metal.ligand, metal.description, metal.evidence) == (
        "Iron-sulfur (2Fe-2S)", "via pros nitrogen", ("ECO:0000250", "ECO:0000255"))
