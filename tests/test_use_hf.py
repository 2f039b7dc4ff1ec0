"""`longvivit export --hf DIR`: the folder transformers' AutoModel loads, on a tiny model with
random weights (tests/use_support.py random_export; what is compared does not depend on
the weights).

In a fresh process (nothing of longvivit imported before transformers loads the folder's
remote code), AutoModel.from_pretrained(DIR, trust_remote_code=True) gives the video and
text embeddings longvivit.load's encode_video / encode_text give on the same clips and
captions: max abs diff 0.0 on this machine (same weights, same float32 operations), asserted
<= 1e-6. The folder is an export too (longvivit.load reads it), and its model card holds the
run config and how to use it.
"""
from __future__ import annotations

import json
import subprocess
import sys

import torch
from safetensors.torch import load_file, save_file

from longvivit.cli.export import main as export_main
from longvivit.data.prepare.manifest import read_manifest
from longvivit.use import load
from use_support import ROOT, env, random_export

# Run in a fresh interpreter: the clips and captions in, the HF model's embeddings out.
FRESH = """
import json, sys
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel

folder, inputs, out = sys.argv[1:]
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
clips = load_file(inputs)
with torch.no_grad():
    video = model.get_video_features(clips["video"], clips["real_frames"])
    text = model.get_text_features(*model.tokenize(json.loads(open(inputs + ".json").read())))
save_file({"video": video.contiguous(), "text": text.contiguous()}, out)
print(type(model).__module__, type(model).__name__, "longvivit.cli" in sys.modules)
"""


def test_the_hf_folder_loads_in_a_fresh_process_and_embeds_as_longvivit_does(tmp_path_factory, tmp_path, capsys):
    made = random_export(tmp_path_factory.mktemp("random"))
    hf = tmp_path / "hf"
    assert export_main([str(made["export"]), "--hf", str(hf)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"hf": str(hf)}
    assert {"config.json", "model.safetensors", "configuration_longvivit.py", "modeling_longvivit.py",
            "tokenizer.model", "README.md", "preprocess.json", "run_config.yaml"} <= {p.name for p in hf.iterdir()}
    assert not [p for p in tmp_path.iterdir() if p.name != "hf"]  # no work folder left

    rows = [r for r in read_manifest(made["synth"] / "val.jsonl") if not hasattr(r, "reason")][:4]
    captions = [c for r in rows for c in r.captions]
    encoder, preprocess, _ = load(hf, "cpu")  # the HF folder read as an export
    clips = [preprocess(r.video) for r in rows]
    video = torch.stack([c.video for c in clips])
    real = torch.tensor([c.real_frames for c in clips])
    inputs = tmp_path / "inputs.safetensors"
    save_file({"video": video, "real_frames": real}, str(inputs))
    (tmp_path / "inputs.safetensors.json").write_text(json.dumps(captions))
    out = tmp_path / "hf_embeddings.safetensors"
    proc = subprocess.run([sys.executable, "-c", FRESH, str(hf), str(inputs), str(out)], capture_output=True,
                          text=True, timeout=300, env=env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the folder's shim hands over longvivit's own class; no longvivit command was imported
    assert proc.stdout.split() == ["longvivit.use.hf", "LongViViTModel", "False"]

    got = load_file(str(out))
    want_video = encoder.encode_video(clips)
    want_text = encoder.encode_text(captions)
    assert got["video"].shape == want_video.shape == (4, made["cfg"].embed_dim)
    assert got["text"].shape == want_text.shape == (len(captions), made["cfg"].embed_dim)
    video_diff = (got["video"] - want_video).abs().max().item()
    text_diff = (got["text"] - want_text).abs().max().item()
    print(f"HF vs longvivit.load, max abs diff: video {video_diff:.3g}, text {text_diff:.3g}")
    assert video_diff <= 1e-6 and text_diff <= 1e-6, (video_diff, text_diff)
    # and the embeddings are not all alike: the comparison could fail
    assert (want_video[0] - want_video[1]).abs().max() > 1e-2

    card = (hf / "README.md").read_text()
    assert "AutoModel.from_pretrained" in card and "## Run config" in card
    assert "No evaluation is recorded for this checkpoint" in card  # a random export has none
