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
    cli           `longvivit COMMAND`: argument parsing and exit codes
"""
__version__ = "0.1.0"
