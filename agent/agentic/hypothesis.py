"""A hypothesis as a predicate over Swiss-Prot metadata, and what a protein's metadata offers one.

A `Term` names one thing a protein's record can show: a concept (an annotation type, or type and
subtype, as agent/baseline.py names them: "Zinc finger C2H2-type"), a keyword, an organism (a
substring of the organism name, so "Homo sapiens" or a genus), a location (a subcellular-location
keyword such as "Nucleus") or free text (in the name or function). A `Rule` joins terms with AND or
OR. The baseline agent proposes rules; the search tool matches one; `predict` turns a rule into
0-10 predictions for the simulator's place on the validation (or, once committed, the test) half.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict

from agent.baseline import concept_key, protein_concepts
from agent.metadata import UNINFORMATIVE_KEYWORDS, clean
from agent.simulate import SCALE_MAX
from storage.protein import Protein

Field = Literal["concept", "keyword", "organism", "location", "text"]

# Swiss-Prot keywords of the "Cellular component" category that say where a protein is.
LOCATION_KEYWORDS = frozenset(
    {
        "Nucleus",
        "Cytoplasm",
        "Membrane",
        "Cell membrane",
        "Secreted",
        "Mitochondrion",
        "Mitochondrion inner membrane",
        "Mitochondrion outer membrane",
        "Endoplasmic reticulum",
        "Golgi apparatus",
        "Lysosome",
        "Peroxisome",
        "Chloroplast",
        "Plastid",
        "Cell wall",
        "Cytoskeleton",
        "Endosome",
        "Vacuole",
        "Cell projection",
        "Cilium",
        "Chromosome",
        "Ribosome",
        "Virion",
        "Periplasm",
        "Cell outer membrane",
        "Thylakoid",
        "Extracellular matrix",
        "Synapse",
        "Nucleolus",
    }
)


class Term(BaseModel):
    model_config = ConfigDict(frozen=True)

    field: Field
    value: str

    def text(self) -> str:
        return self.value if self.field == "concept" else f"{self.field} {self.value}"


class Rule(BaseModel):
    """Terms joined by `op`; a single term has op "AND"."""

    model_config = ConfigDict(frozen=True)

    terms: tuple[Term, ...]
    op: Literal["AND", "OR"] = "AND"

    def text(self) -> str:
        return f" {self.op} ".join(t.text() for t in self.terms)

    def holds(self, protein: Protein) -> bool:
        found = [matches(t, protein) for t in self.terms]
        return all(found) if self.op == "AND" else any(found)


_CACHE_SIZE = 100_000
_folded_cache: dict[tuple, dict[str, set[str]]] = {}
_terms_cache: dict[tuple, frozenset] = {}


def _key(protein: Protein) -> tuple:
    """Cheap identity of a record (an accession may be re-imported with other content)."""
    return (protein.accession, protein.length, len(protein.features), protein.keywords, protein.organism)


def _remember(cache: dict, key: tuple, value):
    if len(cache) >= _CACHE_SIZE:
        cache.clear()
    cache[key] = value
    return value


def _folded(protein: Protein) -> dict[str, set[str]]:
    key = _key(protein)
    found = _folded_cache.get(key)
    return found if found is not None else _remember(_folded_cache, key, _fold(protein))


def _fold(protein: Protein) -> dict[str, set[str]]:
    concepts = {concept_key(c) for c in protein_concepts(protein) if not c.startswith("Keyword ")}
    keywords = {concept_key(k) for k in protein.keywords if k not in UNINFORMATIVE_KEYWORDS}
    return {"concept": concepts, "keyword": keywords}


def matches(term: Term, protein: Protein) -> bool:
    """Whether the protein's record shows the term (case and punctuation folded)."""
    want = concept_key(term.value.removeprefix("Keyword "))
    if not want:
        return False
    if term.field in ("concept", "keyword", "location"):
        folded = _folded(protein)
        pool = folded["keyword"] if term.field != "concept" else folded["concept"]
        if term.field == "concept":  # "Zinc finger" matches "Zinc finger C2H2-type" too
            return any(c == want or c.startswith(want + " ") for c in pool) or want in folded["keyword"]
        return want in pool
    if term.field == "organism":
        return want in concept_key(protein.organism or "")
    text = f"{protein.protein_name or ''} {protein.entry_name or ''} {protein.function or ''}"
    return want in concept_key(clean(text))


def terms_of(protein: Protein) -> frozenset[Term]:
    """Every term a protein's record offers (for enrichment): concepts, keywords, locations, organism."""
    key = _key(protein)
    found = _terms_cache.get(key)
    return found if found is not None else _remember(_terms_cache, key, frozenset(_terms(protein)))


def _terms(protein: Protein) -> set[Term]:
    found = {
        Term(field="concept", value=c) for c in protein_concepts(protein) if not c.startswith("Keyword ")
    }
    for keyword in protein.keywords:
        if keyword in UNINFORMATIVE_KEYWORDS:
            continue
        field: Field = "location" if keyword in LOCATION_KEYWORDS else "keyword"
        found.add(Term(field=field, value=keyword))
    if protein.organism:
        found.add(Term(field="organism", value=protein.organism.split(" (")[0]))
        genus = protein.organism.split()[0]
        if genus:
            found.add(Term(field="organism", value=genus))
    return found


def predict(rule: Rule, proteins: Sequence[Protein], high: float = 1.0, low: float = 0.0) -> list[float]:
    """0-10 per protein: `high` (0..1) where the rule holds, `low` elsewhere."""
    return [round(SCALE_MAX * (high if rule.holds(p) else low), 3) for p in proteins]
