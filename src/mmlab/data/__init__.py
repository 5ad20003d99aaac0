"""Data: the registry of named datasets, corpora, synthetic data, and pretraining batches."""

from mmlab.data.corpus import Corpus, iter_jsonl, load_corpus, read_json, read_text
from mmlab.data.pretrain import PretrainData, tokenize_corpus
from mmlab.data.registry import REGISTRY, DataError, Dataset, dataset_path, fetch, get_dataset, verify
from mmlab.data.synthetic import TaskItem, make_tasks, story_corpus

__all__ = [
    "REGISTRY", "Corpus", "DataError", "Dataset", "PretrainData", "TaskItem", "dataset_path", "fetch",
    "get_dataset", "iter_jsonl", "load_corpus", "make_tasks", "read_json", "read_text", "story_corpus",
    "tokenize_corpus", "verify",
]
