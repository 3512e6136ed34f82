"""One module per UniProt format (flat file, XML, REST JSON, REST TSV), each turning a text or byte
stream into `Protein`s and `RecordError`s. The public entry point is storage/swissprot.py; the shared
vocabulary and normalisation rules live in `_common`.
"""
