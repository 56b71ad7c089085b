"""ELECTRA (discriminator checkpoints). BERT's layer modules; its embeddings may be narrower
than the encoder (`embedding_size` < `hidden_size`, e.g. 128 vs 256 for ELECTRA-small), joined
by `embeddings_project`. The residual stream then starts at that projection's output: width
slicing keeps the embedding table as it is and slices the projection's rows."""

from distillery.architectures.base import READ, SQUARE, WRITE, Adapter, Slot
from distillery.config import ConfigError


class ElectraAdapter(Adapter):
    name = "electra"
    model_types = ("electra",)

    @staticmethod
    def _project(model):
        return getattr(model.base_model, "embeddings_project", None)

    def residual_probes(self, model):
        probes = super().residual_probes(model)
        if self._project(model) is not None:  # the embedding LayerNorm is embedding_size wide
            probes[0] = self._project(model)
        return probes

    def width_targets(self, model):
        targets = super().width_targets(model)
        if self._project(model) is None:
            return targets
        emb = self.embeddings(model)
        return [(Slot(model.base_model, "embeddings_project"), WRITE)] + [t for t in targets if t[0].parent is not emb]

    def head_targets(self, model):
        return [(Slot(model.classifier, "dense"), SQUARE), (Slot(model.classifier, "out_proj"), READ)]

    def check_width(self, config, hidden):
        if config.embedding_size != config.hidden_size and hidden == config.embedding_size:
            raise ConfigError(f"params.yaml: student.hidden_size: {hidden} equals this ELECTRA's embedding_size; "
                              "transformers then builds no embeddings_project, so the sliced weights would not "
                              "load: choose another width")

    def set_width(self, config, hidden, heads, intermediate):
        if config.embedding_size == config.hidden_size:
            config.embedding_size = hidden  # the embeddings are the residual stream: sliced too
        super().set_width(config, hidden, heads, intermediate)
