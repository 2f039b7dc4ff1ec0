"""longvivit.use: what a trained encoder is for. Load it with its preprocessing and
tokenizer (`load`, encoder.py), turn raw videos into its input (preprocess.py), write and
search embedding indexes (embed.py, index.py, search.py: `longvivit embed`, `longvivit
search`), and hand it to the Hugging Face ecosystem (hf.py: `longvivit export --hf`).
docs/use.md."""
from longvivit.use.encoder import Encoder, TextTokenizer, load
from longvivit.use.preprocess import Clip, Preprocess, Window

__all__ = ["load", "Encoder", "TextTokenizer", "Preprocess", "Clip", "Window"]
