"""The model's forward and backward make no host sync when real_frames comes on the CPU (or
as None or an int): checked on CPU with the meta device standing in for a GPU.

A host sync (torch.cuda.set_sync_debug_mode's sense) is the host waiting for the device:
reading a device tensor's value (.item(), bool(), int(), .tolist(): aten._local_scalar_dense),
a blocking copy between the host and the device, or a tensor built from Python data on the
device (torch.tensor(..., device=cuda) copies from pageable memory and waits). A meta tensor
has no values, so a model whose parameters and inputs live there runs its whole forward and
backward on shapes alone; the two modes below record every such operation on the way (the
GPU suite counts the real ones on a GPU: bench/gpu.py check_shipped_model)."""
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from longvivit.model import build_model, model_config
from longvivit.model.masking import to_device
from longvivit.model.video import clip_pixel_stats

META = torch.device("meta")
FRAMES = 16


class HostSyncs(TorchDispatchMode):
    """Records the operations that would make the host wait for a device (meta here)."""

    def __init__(self):
        super().__init__()
        self.events: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default and args[0].device.type != "cpu":
            self.events.append(f"read of a {args[0].device.type} tensor")
        elif func is torch.ops.aten._to_copy.default:
            src, dst = args[0].device, kwargs.get("device") or args[0].device
            if src != dst and not kwargs.get("non_blocking", False):
                self.events.append(f"blocking copy {src.type} -> {dst.type}")
        elif func is torch.ops.aten.copy_.default:
            dst, src = args[0].device, args[1].device
            if src != dst and not (args[2] if len(args) > 2 else kwargs.get("non_blocking", False)):
                self.events.append(f"blocking copy_ {src.type} -> {dst.type}")
        return func(*args, **kwargs)


class DeviceDataFromHost(TorchFunctionMode):
    """Records torch.tensor / torch.as_tensor of host data straight onto a device (below the
    dispatcher: the dispatch mode cannot see their copy)."""

    def __init__(self, events: list[str]):
        super().__init__()
        self.events = events

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        device = kwargs.get("device")
        if func in (torch.tensor, torch.as_tensor) and device is not None and torch.device(device).type != "cpu":
            self.events.append(f"{func.__name__}(host data, device={device})")
        return func(*args, **kwargs)


def syncs_of(fn) -> list[str]:
    with HostSyncs() as mode, DeviceDataFromHost(mode.events):
        fn()
    return mode.events


CASES = {
    "joint-cls (open_clip shape: T' CLS key copies)": ["video.cls_token=true", "video.pool=cls", "text.arch=clip",
                                                     "text.tokenizer=open_clip", "text.vocab_size=49408"],
    "joint-mean, siglip": ["loss=siglip"],
    "joint-cls packed (padded clips in one sequence)": ["video.cls_token=true", "video.packing=packed"],
    "factorized-tube": ["video.attention=factorized", "video.mask_scheme=tube", "video.cls_token=true"],
}
REAL = {"None": None, "int": FRAMES, "cpu-whole": torch.tensor([FRAMES, FRAMES]),
        "cpu-padded": torch.tensor([6, FRAMES])}


def meta_model(overrides):
    torch.manual_seed(0)
    cfg = model_config("tiny", [f"video.frames={FRAMES}", "video.depth=2", *overrides])
    return build_model(cfg).train().to(META)


def micro_batch(model, real, mask_ratio):
    video = torch.empty(2, FRAMES, 32, 32, 3, dtype=torch.uint8, device=META)
    ids = torch.empty(2, 16, dtype=torch.long, device=META)
    mask = torch.empty(2, 16, dtype=torch.bool, device=META)
    loss, _ = model(video, ids, mask, mask_ratio=mask_ratio, generator=torch.Generator().manual_seed(0),
                    real_frames=real)
    loss.backward()


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("mask_ratio", [0.0, 0.5])
def test_forward_and_backward_make_no_host_sync_with_real_frames_on_the_host(case, mask_ratio):
    model = meta_model(CASES[case])
    micro_batch(model, None, mask_ratio)  # the first one makes the per-device constants
    for name, real in REAL.items():
        assert syncs_of(lambda: micro_batch(model, real, mask_ratio)) == [], name


def test_the_detector_sees_what_the_old_code_did():
    """What the model did per micro-batch before (normalize's constants, bool/int of a
    device tensor, a blocking copy of the mask indices) is what these modes record."""
    flags = torch.zeros(2, dtype=torch.bool, device=META)
    with pytest.raises(RuntimeError):  # a meta tensor has no value to read, but the read is recorded
        syncs_of(lambda: bool(flags.all()))
    events = syncs_of(lambda: (torch.tensor((0.5, 0.25), device=META), torch.arange(4).to(META)))
    assert events == ["tensor(host data, device=meta)", "blocking copy cpu -> meta"]
    assert syncs_of(lambda: to_device(torch.arange(4), META)) == []  # the model's way: not blocking


def test_clip_pixel_stats_are_made_once_per_device_in_float32_and_never_kept_fake():
    from torch._subclasses.fake_tensor import FakeTensorMode

    mean, std = clip_pixel_stats(torch.device("cpu"))
    assert clip_pixel_stats(torch.device("cpu"))[0] is mean
    assert mean.dtype == std.dtype == torch.float32
    assert torch.equal(mean, torch.tensor((0.48145466, 0.4578275, 0.40821073)) * 255)
    # the planner runs the model on FakeTensors (longvivit/train/plan.py): made anew there, and the
    # real model afterwards still gets real ones
    model = build_model(model_config("tiny", ["video.frames=4"]))
    with FakeTensorMode() as fake:
        video = fake.from_tensor(torch.zeros(1, 4, 32, 32, 3, dtype=torch.uint8))
        assert model.video.normalize(video).shape == (1, 3, 4, 32, 32)
    assert clip_pixel_stats(torch.device("cpu"))[0] is mean
    model.video.normalize(torch.zeros(1, 4, 32, 32, 3, dtype=torch.uint8))


def test_to_device_moves_to_the_host_blocking_and_leaves_same_device_tensors_alone():
    x = torch.arange(3)
    assert to_device(x, None) is x and to_device(x, torch.device("cpu")) is x
    on_meta = to_device(x, META)
    assert on_meta.device == META and to_device(on_meta, META) is on_meta


def test_real_frames_as_an_int_or_on_the_host_embed_as_before():
    """An int is every clip's frame count; whole clips take the unpadded path either way."""
    torch.manual_seed(0)
    model = build_model(model_config("tiny", [f"video.frames={FRAMES}", "video.depth=2",
                                              "video.cls_token=true"])).eval()
    video = torch.randint(0, 256, (2, FRAMES, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))

    def embed(real, ratio=0.5):
        with torch.no_grad():
            return model.encode_video(video, mask_ratio=ratio, generator=torch.Generator().manual_seed(0),
                                      real_frames=real)

    plain = embed(None)
    assert torch.equal(embed(FRAMES), plain) and torch.equal(embed(torch.tensor([FRAMES, FRAMES])), plain)
    assert torch.equal(embed(6), embed(torch.tensor([6, 6])))
    assert not torch.allclose(embed(6), plain)
