"""BERT and its checkpoints with BERT's modules: MiniLM, TinyBERT, bge / e5 BERTs."""

from distillery.architectures.base import Adapter


class BertAdapter(Adapter):
    name = "bert"
    model_types = ("bert",)
