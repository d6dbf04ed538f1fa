"""Readers that turn raw collections into a Catalog: NIH label table, class folders, any CSV."""

from chestxray.data.sources.chexpert import read_chexpert
from chestxray.data.sources.folders import read_folder
from chestxray.data.sources.nih import read_nih
from chestxray.data.sources.table import read_csv_table, write_catalog

__all__ = ["read_chexpert", "read_csv_table", "read_folder", "read_nih", "write_catalog"]
