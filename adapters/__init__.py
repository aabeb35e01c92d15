"""Readers and writers for the files TRIDENT, CLAM, STAMP and friends produce (installed as msrl_plugin.adapters)."""
from .bag_inspection import BagReport, inspect_bag
from .bag_source import FileBagSource
from .bags import BagFile, is_locked, load_pt_bag, read_bag, read_bag_attrs
from .clam import find_split_files, read_clam_dataset_csv, read_split_file, resolve_split_ids
from .layouts import BagIndex, find_bags
from .loader import load_clam_cohort, load_cohort
from .tables import ClinicalTable, read_clinical, read_genomics, read_table, strip_slide_extension
from .validate import ValidationReport, format_report, format_reports, validate_folder, validate_tree

__all__ = [
    "BagFile", "BagIndex", "BagReport", "ClinicalTable", "FileBagSource", "ValidationReport",
    "find_bags", "find_split_files", "format_report", "format_reports", "inspect_bag", "is_locked", "load_clam_cohort",
    "load_cohort", "load_pt_bag", "read_bag", "read_bag_attrs", "read_clam_dataset_csv", "read_clinical",
    "read_genomics", "read_split_file", "read_table", "resolve_split_ids", "strip_slide_extension",
    "validate_folder", "validate_tree",
]
