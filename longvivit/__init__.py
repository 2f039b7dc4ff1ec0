"""longvivit: contrastive pre-training of video-first encoders on long clips.

Subpackages: ``longvivit.model`` (plain PyTorch model, loss, presets), ``longvivit.data``
(shards, streaming reader, DALI decoding, tokenizer, synthetic benchmark) and
``longvivit.train`` (DeepSpeed engine loop, CLI, checkpoints, eval, export).
"""

__version__ = "0.1.0"
