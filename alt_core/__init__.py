"""ALT building blocks: config, datapool, losses, trainer, sampling and feedback.

Imports neither Prefect nor vLLM nor DeepSpeed at module level, so `import alt_core`
works on a machine with none of the engines installed.
"""

__version__ = "0.1.0"
