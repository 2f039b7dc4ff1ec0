"""The `longvivit` command: one entry point, one module per subcommand.

Each subcommand's module (longvivit/cli/<command>.py) parses its arguments, calls the
library and turns the outcome into an exit status, through ``main(argv)``. This file only
dispatches, importing the module lazily so that `longvivit --help` is instant and a
subcommand pays only for the libraries it uses. `tokenizer` and `train` are dispatched to the
main() of their library modules (longvivit/data/load/tokenizer.py, longvivit/train/trainer.py).
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "synth": ("longvivit.cli.synth", "write the synthetic long-video benchmark (videos + manifests)"),
    "shards": ("longvivit.cli.shards", "manifest -> MDS shards (transcode, resample FPS, resize)"),
    "import": ("longvivit.cli.import_", "MSR-VTT/YouCook2/Kinetics/WebVid annotations -> a manifest"),
    "tokenizer": ("longvivit.cli.tokenizer", "train a sentencepiece model on a caption corpus"),
    "train": ("longvivit.cli.train", "CONFIG [key=value ...]: train (also under deepspeed / torchrun / srun)"),
    "eval": ("longvivit.cli.eval", "CHECKPOINT -> zero-shot retrieval metrics as JSON"),
    "export": ("longvivit.cli.export", "CHECKPOINT -> one safetensors file + config (--hf: a Hugging Face folder)"),
    "embed": ("longvivit.cli.embed", "MODEL INPUT --out DIR: embeddings of videos (and windows) and texts"),
    "search": ("longvivit.cli.search", "INDEX TEXT: the videos (and moments) an index holds that match a text"),
    "plan": ("longvivit.cli.plan", "CONFIG -> predicted memory per GPU, what fits"),
    "demo": ("longvivit.cli.demo", "the whole path on the embedded synthetic benchmark, on CPU"),
    "smoke": ("longvivit.cli.smoke", "build the tiny model and run one forward/backward"),
}


def usage() -> str:
    lines = ["usage: longvivit COMMAND [args]", "", "commands:"]
    lines += [f"  {name:<10} {doc}" for name, (_, doc) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # The deepspeed launcher puts --local_rank=N before the user's arguments
    # (`deepspeed --module longvivit.cli train ...`); the rank is read from the env.
    argv = [a for a in argv if not a.startswith("--local_rank")]
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"longvivit: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
