"""What benchmarks/train.py's measurements share: the matmul peak, synthetic rows, and the steady-state clock
around `sae.train_saes`."""
from __future__ import annotations

import contextlib
import gc
import math
import resource
import statistics
import time

import torch

from sae import JumpReLUSAE, TrainConfig, train_saes

BASE_LAMBDA = 1e-3


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def step_flops(batch: int, d_in: int, width: int, k: int = 1) -> float:
    # a dense JumpReLU step per SAE: encoder and decoder matmuls 2 B d W each, backward twice the forward
    return 12.0 * batch * d_in * width * k


def work_flops(batch: int, d_in: int, width: int, l0: float | None = None) -> float:
    """The matmul FLOPs a step actually does (no input gradient is computed). Dense (l0 None): five
    [B, d] x [d, W] products, 10 B d W. Sparse: the encoder's forward 2 B d W, then four gather-sums of B*L0
    rows of d (decoder forward, dL/df, dL/dW_dec, dL/dW_enc), 8 B L0 d."""
    if l0 is None:
        return 10.0 * batch * d_in * width
    return 2.0 * batch * d_in * width + 8.0 * batch * l0 * d_in


# ------------------------------------------------------------------------------------------------ peak

def time_mm(a: torch.Tensor, b: torch.Tensor, min_time: float, batches: int = 3) -> float:
    """Best rate (FLOP/s) over `batches` timed batches of back-to-back a @ b, each >= min_time / batches."""
    device = a.device
    out = torch.empty(a.shape[0], b.shape[1], device=device, dtype=a.dtype)
    flops = 2.0 * a.shape[0] * a.shape[1] * b.shape[1]
    torch.mm(a, b, out=out)  # warmup: heuristics, workspace, page faults
    sync(device)
    t0 = time.perf_counter()
    torch.mm(a, b, out=out)
    sync(device)
    one = max(time.perf_counter() - t0, 1e-6)
    reps = max(1, math.ceil(min_time / batches / one))
    best = 0.0
    for _ in range(batches):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        sync(device)
        best = max(best, reps * flops / (time.perf_counter() - t0))
    return best


@contextlib.contextmanager
def matmul_kind(kind: str):
    """The tensor dtype for one matmul kind (fp32 = full precision, tf32, bf16), with torch's float32 matmul
    precision set to match for the duration."""
    prev = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if kind == "tf32" else "highest")
    try:
        yield torch.bfloat16 if kind == "bf16" else torch.float32
    finally:
        torch.set_float32_matmul_precision(prev)


def measure_peak(device: torch.device, kind: str, sizes: list[int], min_time: float) -> dict:
    """Dense square matmul throughput for one matmul kind, best of `sizes`."""
    per_size = {}
    with matmul_kind(kind) as dtype:
        for n in sizes:
            gen = torch.Generator(device=device).manual_seed(n)
            a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
            b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
            per_size[str(n)] = time_mm(a, b, min_time)
            del a, b
    best = max(per_size, key=per_size.get)
    return {"dtype": kind, "flops_per_s": per_size[best], "best_size": int(best), "per_size": per_size}


def shaped_encoder_mm(device: torch.device, kind: str, batch: int, d_in: int, width: int,
                      min_time: float) -> float:
    """The encoder's own matmul shape [B, d] @ [d, W]: how fast the matmul library runs this (skinny when
    d_in is small) shape, for context next to the square peak."""
    with matmul_kind(kind) as dtype:
        gen = torch.Generator(device=device).manual_seed(width)
        a = torch.randn(batch, d_in, device=device, dtype=dtype, generator=gen)
        b = torch.randn(d_in, width, device=device, dtype=dtype, generator=gen)
        return time_mm(a, b, min_time)


# ------------------------------------------------------------------------------------------------ data

def make_rows(n_rows: int, d_in: int, device: torch.device, seed: int) -> torch.Tensor:
    """Residual-stream-like rows: a non-zero mean (a few large directions, as real residual streams have),
    plus Gaussian noise with a power-law spectrum in a random basis. Float32, on `device`."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d_in, d_in, generator=gen))
    spectrum = torch.arange(1, d_in + 1, dtype=torch.float32).pow(-0.5)
    mix = (spectrum[:, None] * q).to(device)  # rows scaled, then rotated
    mean = torch.randn(d_in, generator=gen) * 0.3
    mean[torch.randperm(d_in, generator=gen)[:4]] += 8.0
    mean = mean.to(device)
    out = torch.empty(n_rows, d_in, device=device, dtype=torch.float32)
    dgen = torch.Generator(device=device).manual_seed(seed + 1)
    chunk = 1 << 16
    for s in range(0, n_rows, chunk):
        e = min(n_rows, s + chunk)
        g = torch.randn(e - s, d_in, device=device, generator=dgen)
        torch.addmm(mean, g, mix, out=out[s:e])
    return out


def threshold_for_l0(rows: torch.Tensor, scale: float, width: int, fraction: float, seed: int) -> float:
    """The JumpReLU threshold init at which a freshly initialised SAE fires on `fraction` of its latents
    per row (measured on up to 64 rows): how the sparse comparison starts at L0 = fraction * width."""
    sae = JumpReLUSAE(rows.shape[1], width, generator=torch.Generator().manual_seed(seed)).to(rows.device)
    with torch.no_grad():
        z = sae.pre_acts(rows[:64] / scale).flatten()
    return float(z.kthvalue(max(1, round((1.0 - fraction) * z.numel()))).values)


def usage() -> tuple[int, float]:
    """(minor page faults, system CPU seconds) of this process so far: what glibc's re-mapping of big
    temporaries costs shows up here."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_minflt, r.ru_stime


def usage_per_step(before: tuple[int, float], after: tuple[int, float], steps: int) -> dict:
    return {"minor_faults_per_step": (after[0] - before[0]) / steps, "sys_s_per_step": (after[1] - before[1]) / steps}


def norm_scale_of(rows: torch.Tensor) -> float:
    """C = sqrt(E ||x||^2), as the pipeline's dataset statistics give it."""
    return float(rows.double().pow(2).sum(1).mean().sqrt())


class CycledRows:
    """An array of n_rows rows that repeats a pool of whole batches (so a long run does not need its own
    copy of every row). Row slices are views of the pool when they do not wrap."""

    def __init__(self, pool: torch.Tensor, n_rows: int) -> None:
        self.pool = pool
        self.shape = (int(n_rows), int(pool.shape[1]))

    def __getitem__(self, rows: slice) -> torch.Tensor:
        start, stop, _ = rows.indices(self.shape[0])
        n = stop - start
        p = self.pool.shape[0]
        a = start % p
        if a + n <= p:
            return self.pool[a:a + n]
        parts, left = [], n
        while left:
            take = min(left, p - a)
            parts.append(self.pool[a:a + take])
            left -= take
            a = 0
        return torch.cat(parts)


# ------------------------------------------------------------------------------------------- the clock

class Plan:
    """warm + timed steps, both multiples of `every` (the clock interval, = log_every)."""

    def __init__(self, every: int, warm: int, timed: int) -> None:
        self.every = every
        self.warm = max(every, math.ceil(warm / every) * every)
        self.timed = max(every, math.ceil(timed / every) * every)

    @property
    def total(self) -> int:
        return self.warm + self.timed

    def as_dict(self) -> dict:
        return {"every": self.every, "warm_steps": self.warm, "timed_steps": self.timed}


def plan_for(args, flops: float, rate_guess: float) -> Plan:
    """Timed steps to fill --budget-s at `rate_guess` FLOP/s (the previous configuration's rate)."""
    est = flops / max(rate_guess, 1.0)
    timed = int(min(args.max_timed, max(args.min_timed, math.ceil(args.budget_s / est))))
    return Plan(args.every, args.warm, timed)


def summarise(stamps: dict[int, float], plan: Plan) -> dict:
    """Rate = timed / (t[warm + timed] - t[warm]). The per-interval times are kept too: on a shared machine
    other processes' bursts land in single intervals, so the median interval is the steadier estimate."""
    marks = list(range(plan.warm, plan.total + 1, plan.every))
    missing = [m for m in marks if m not in stamps]
    if missing:
        raise RuntimeError(f"no clock reading after steps {missing}")
    window = stamps[plan.total] - stamps[plan.warm]
    per_step = [(stamps[b] - stamps[a]) / plan.every for a, b in zip(marks, marks[1:])]
    return {"s_per_step": window / plan.timed, "steps_per_s": plan.timed / window, "window_s": window,
            "interval_s_per_step": per_step,
            "median_s_per_step": statistics.median(per_step)}


def time_ours(source, d_in: int, width: int, k: int, plan: Plan, args, device: torch.device,
              scale: float, threshold_init: float = 0.001, step: str = "auto") -> dict:
    """`train_saes` on a 2-D array (so through ArrayBatches and its read-ahead thread), as tasks/train.py
    calls it. The clock is read in its on_log hook, which runs after steps L, 2L, ... (L = log_every); the
    first record of each emit has read the losses back with float(), and the hook synchronises before reading
    the clock. The model build, the first steps (Adam state, allocator growth, matmul heuristics, the reader
    thread's start) and the final fold fall outside the window; everything a steady step pays is inside."""
    cfg = TrainConfig(widths=[width], lambdas=[BASE_LAMBDA * 2 ** i for i in range(k)],
                      batch_size=args.batch, epochs=1, log_every=plan.every, checkpoint_every=0,
                      lr_warmup_steps=0, lambda_warmup_steps=plan.warm, autocast_dtype=args.autocast,
                      threshold_init=threshold_init, bandwidth=0.001, seed=args.seed, step=step)
    stamps: dict[int, float] = {}
    used: dict[int, tuple[int, float]] = {}
    l0s: list[float] = []

    def on_log(rec: dict) -> None:
        if rec["step"] not in stamps:
            sync(device)
            stamps[rec["step"]] = time.perf_counter()
            used[rec["step"]] = usage()
        if plan.warm < rec["step"] <= plan.total:
            l0s.append(rec["l0"])

    sync(device)
    t0 = time.perf_counter()
    trained = train_saes(source, None, cfg, scale, on_log=on_log, device=device)
    sync(device)
    total = time.perf_counter() - t0
    l0 = [t.log[-1]["l0"] for t in trained]
    del trained
    free_memory(device)
    out = summarise(stamps, plan)
    out.update(plan.as_dict())
    out["wall_s"] = total
    out["first_window_s"] = stamps[plan.warm] - t0  # build + warm steps, excluded
    out["final_l0"] = l0
    out["timed_mean_l0"] = statistics.fmean(l0s)
    out.update(usage_per_step(used[plan.warm], used[plan.total], plan.timed))
    return out
