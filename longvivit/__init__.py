"""longvivit: contrastive pre-training of video-first encoders on long clips.

Subpackages: ``longvivit.model`` (plain PyTorch model, loss, presets), ``longvivit.data``
(shards, streaming reader, DALI decoding, tokenizer, synthetic benchmark) and
``longvivit.train`` (DeepSpeed engine loop, CLI, checkpoints, eval, export).
"""
# In a checkout the subpackages live in model/, data/, train/ (pyproject's package-dir), not
# under this folder. Where longvivit is installed from a wheel (e.g. into --target on an
# air-gapped GPU node) and Python runs from the checkout, this folder comes first on
# sys.path and would hide the installed subpackages: extend the package path to them.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)

__version__ = "0.1.0"
