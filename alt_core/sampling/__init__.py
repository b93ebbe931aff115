"""Sampling: typed shard specs (`spec`), engines behind one interface (`backends`), and
the shard that generates and commits a samples table (`shard`)."""

from alt_core.sampling.backends import (
    Generation,
    HFBackend,
    SamplingBackend,
    VLLMBackend,
    _progress_bar,
    make_backend,
)
from alt_core.sampling.shard import sample_shard, samples_frame, tokenize_queries
from alt_core.sampling.spec import EngineSettings, GenerationParams, SampleSpec

__all__ = [
    "EngineSettings",
    "Generation",
    "GenerationParams",
    "HFBackend",
    "SampleSpec",
    "SamplingBackend",
    "VLLMBackend",
    "_progress_bar",
    "make_backend",
    "sample_shard",
    "samples_frame",
    "tokenize_queries",
]
