"""benchmarks/train.py's profile: a few steps of one SAE under torch.profiler, split into encoder/decoder
matmuls vs the rest, per phase (forward, backward, the STE backward, Adam, decoder projection and
renormalisation, the loop's own bookkeeping)."""
from __future__ import annotations

import contextlib

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

from sae import TrainConfig, train_saes
from sae.base import SparseAutoencoder
from sae.jumprelu import JumpReLUSAE
from train_common import BASE_LAMBDA, CycledRows, free_memory, sync

MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addmv", "aten::mv",
              "aten::dot", "aten::_scaled_mm", "aten::matmul", "aten::linear"}
# the SAE's per-step methods, wrapped in profiler ranges of these labels
PATCHES = [(JumpReLUSAE, "training_loss", "forward (training_loss)"),
           (SparseAutoencoder, "remove_parallel_decoder_grad", "decoder grad projection"),
           (JumpReLUSAE, "after_step", "after_step (renormalise, clamp)")]
LABELS = {label for _, _, label in PATCHES}


@contextlib.contextmanager
def annotated():
    """PATCHES applied (this process only, restored afterwards)."""
    saved = []
    for cls, name, label in PATCHES:
        orig = cls.__dict__[name]

        def wrapped(self, *a, _orig=orig, _label=label, **kw):
            with record_function(_label):
                return _orig(self, *a, **kw)

        saved.append((cls, name, orig))
        setattr(cls, name, wrapped)
    try:
        yield
    finally:
        for cls, name, orig in saved:
            setattr(cls, name, orig)


def phase(ev) -> str:
    node = ev
    while node is not None:
        name = node.name
        if name.startswith("autograd::engine::evaluate_function:"):
            fn = name.split(":", 3)[-1].strip()
            return "backward: JumpReLU STE" if "JumpReLU" in fn or "Heaviside" in fn else "backward"
        if name in LABELS:
            return name
        if name.startswith("Optimizer.step"):
            return "Adam step"
        if name.startswith("Optimizer.zero_grad"):
            return "zero_grad"
        node = node.cpu_parent
    return "loop: batch prep + firing bookkeeping + log"


def profile_step(args, device: torch.device, pool: torch.Tensor, scale: float) -> dict:
    width = args.profile_width
    warm, active = 2, args.profile_steps
    n = warm + active + 1
    source = CycledRows(pool, n * args.batch)
    cfg = TrainConfig(widths=[width], lambdas=[BASE_LAMBDA], batch_size=args.batch, log_every=1,
                      checkpoint_every=0, lr_warmup_steps=0, lambda_warmup_steps=1,
                      autocast_dtype=args.autocast, threshold_init=0.001, bandwidth=0.001, seed=args.seed)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    prof = profile(activities=acts)

    def on_log(rec):  # log_every=1: called once after every step (K=1)
        if rec["step"] == warm:
            sync(device)
            prof.start()
        elif rec["step"] == warm + active:
            sync(device)
            prof.stop()

    with annotated():
        train_saes(source, None, cfg, scale, on_log=on_log, device=device)
    free_memory(device)
    cuda = device.type == "cuda"
    table: dict[tuple[str, str], float] = {}
    for ev in prof.events():
        if getattr(ev, "device_type", DeviceType.CPU) != DeviceType.CPU:
            continue  # device-side records: their time is already counted on the op that launched them
        t = ev.self_device_time_total if cuda else ev.self_cpu_time_total
        if t <= 0 or ev.name.startswith("ProfilerStep"):
            continue
        kind = "matmul" if ev.name in MATMUL_OPS else "other"
        key = (phase(ev), kind)
        table[key] = table.get(key, 0.0) + t
    total = sum(table.values())
    breakdown = [{"phase": p, "kind": k, "ms_per_step": v / 1e3 / active, "share": v / total}
                 for (p, k), v in sorted(table.items(), key=lambda kv: -kv[1])]
    top = prof.key_averages().table(sort_by="self_device_time_total" if cuda else "self_cpu_time_total",
                                    row_limit=15)
    return {"width": width, "K": 1, "steps": active, "clock": "device (kernel) time" if cuda else "CPU self time",
            "profiled_ms_per_step": total / 1e3 / active, "breakdown": breakdown, "top_ops": top}
