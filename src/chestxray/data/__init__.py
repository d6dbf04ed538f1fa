"""Data: from raw collections to prepared shards and batches.

Sources (NIH ChestX-ray14 tables, class folders, generic CSVs; PNG, JPEG, DICOM) become one catalog — a row an
image with its patient, labels and a patient-level split (`catalog`, `sources`, `split`). `prepare` decodes every
image once to 8-bit grey at a fixed size and writes WebDataset shards with a manifest and a quarantine list
(`imaging`, `shards`; `remote` reads them over http(s), `verify` checks them); `datamodule` streams them as
seeded, rank-even batches with the `augment` policies.
`explore` describes a catalog, `synth` makes a labelled synthetic collection, `samples` finds the bundled ones.
The next stage gets: a PREPARED folder whose manifest names labels, size, preprocessing and fingerprint.
"""
