"""Readers that turn raw collections into a Catalog: NIH label table, class folders, any CSV."""

from chestxray.sources.folders import read_folder
from chestxray.sources.nih import read_nih
from chestxray.sources.table import read_csv_table, write_catalog

__all__ = ["read_csv_table", "read_folder", "read_nih", "write_catalog"]
