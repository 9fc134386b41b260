"""Corpus readers and writers, site data and splits, and the synthetic demo corpus."""

from data_loaders.brat import AnnotationError, read_brat, read_brat_folder, write_brat
from data_loaders.document import Attribute, Document, Entity, Relation, Span
from data_loaders.sites import SiteData, demo_corpus_dir, ensure_demo_corpus, load_site
from data_loaders.splits import SPLITS, split_documents, split_of
from data_loaders.stats import ReadStats
from data_loaders.synthetic import generate_corpus

__all__ = [
    "AnnotationError",
    "Attribute",
    "Document",
    "Entity",
    "ReadStats",
    "Relation",
    "SPLITS",
    "SiteData",
    "Span",
    "demo_corpus_dir",
    "ensure_demo_corpus",
    "generate_corpus",
    "load_site",
    "read_brat",
    "read_brat_folder",
    "split_documents",
    "split_of",
    "write_brat",
]
