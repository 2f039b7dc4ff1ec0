"""longvivit: contrastive pre-training of video-first encoders on long clips.

The import path is the folder path; the subpackages are the architecture, imported in one
direction (tests/test_layout.py):

    config        the config loader every config uses (OmegaConf, one error style)
    configs       the shipped run and DeepSpeed configs (package data) and their resolver
    distributed   where a rank sits, collectives, the watchdog, preemption
    model         plain PyTorch: video and text towers, masking, losses, presets, init
    data          prepare: synth, manifests, importers, shards, video I/O, object storage;
                  load: reader, decode, loader, synthetic batches, tokenizer
    eval          embedding, retrieval, zero-shot, gallery, report
    train         the trainer, its config, engine, checkpoints, metrics, plan, demo, export
    use           a trained encoder at work: load, preprocess, embed, search, Hugging Face
    cli           `longvivit COMMAND`: argument parsing and exit codes

    model, preprocess, tokenizer = longvivit.load("runs/exp1-export")   # longvivit/use/, docs/use.md
"""
__version__ = "0.1.0"
__all__ = ["load"]


def __getattr__(name: str):
    """`longvivit.load`, imported on first use: `import longvivit` stays light (no torch)."""
    if name == "load":
        from longvivit.use import load  # torch, DALI and the model: only when a model is loaded

        return load
    raise AttributeError(f"module 'longvivit' has no attribute {name!r}")
