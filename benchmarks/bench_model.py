"""Speed of the MambaAttention `base` model on the CPU: the previous implementation and the current one side by side, one run.

Training step (forward + asymmetric loss + backward + AdamW step) and inference (eval mode, `torch.inference_mode`)
in samples/s at batch 256 (and 32), L = 50, 69 features, float32, 2 threads by default, for the same network
with its Mamba layers run by:

* `before`: the previous `torch` backend, kept verbatim below (time-first fused scan with transposed copies,
  whole-batch (B, D, N) steps, `nn.Conv1d` on transposed activations);
* `now`: the current `torch` backend (`k4_nbdev.model`: batch-first scan with (b, N, D) states on cache-sized
  batch slices, no transposed copies, shifted multiply-add causal convolution, and in eval mode the attention
  through `F.scaled_dot_product_attention`);
* optionally (`--engines`) `mambapy pscan` (mambapy's parallel-scan block loaded with the same weights) and the
  `lstm` backend.

It also prints how far the current scan is from `selective_scan_ref` (the plain reference loop), forward and
all five gradients, at the base block's shape, and how far the two implementations' logits and gradients are.
Timings are best-of-`--rounds`, engines interleaved round-robin, with wall time and the process's CPU time
(CPU time hardly moves when other processes compete for the cores; wall time does).
Run: python benchmarks/bench_model.py [--rounds 5] [--threads 2] [--engines before,now]
"""
import argparse
import copy
import os
import time
import types

import torch
import torch.nn.functional as F

from k4_nbdev.loss import make_loss
from k4_nbdev.model import create_mamba_attention_model, selective_scan, selective_scan_ref

L, FEATURES, SIZE = 50, 69, 'base'


# ---- the previous implementation (k4_nbdev.model before issue 15, item 4), kept verbatim to time against ----
def legacy_scan_states(u, delta, A, B, C, keep_states):
    "Time-first (L, B, D) inputs, whole-batch (B, D, N) steps."
    L, b, d = u.shape
    du = delta * u
    hs = u.new_empty(L if keep_states else 2, b, d, A.shape[1])
    ys = u.new_empty(L, b, d)
    decay = u.new_empty(b, d, A.shape[1])
    for t in range(L):
        h = hs[t % len(hs)]
        torch.mul(du[t, :, :, None], B[t, :, None, :], out=h)
        if t:
            torch.mul(delta[t, :, :, None], A, out=decay).exp_()
            h.addcmul_(decay, hs[(t - 1) % len(hs)])
        torch.matmul(h, C[t, :, :, None], out=ys[t, :, :, None])
    return ys, (hs if keep_states else None)


class LegacySelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C):
        u, delta, B, C = (t.transpose(0, 1).contiguous() for t in (u, delta, B, C))
        ys, hs = legacy_scan_states(u, delta, A, B, C, keep_states=True)
        ctx.save_for_backward(u, delta, A, B, C, hs)
        return ys.transpose(0, 1)

    @staticmethod
    def backward(ctx, grad_y):
        u, delta, A, B, C, hs = ctx.saved_tensors
        L, b, d = u.shape
        g = grad_y.transpose(0, 1).contiguous()
        du = delta * u
        grad_write = torch.empty_like(u)
        grad_delta_decay = torch.zeros_like(u)
        grad_B, grad_C = torch.empty_like(B), torch.empty_like(C)
        grad_A = u.new_zeros(b, d, A.shape[1])
        hbar, decay, x = (u.new_empty(b, d, A.shape[1]) for _ in range(3))
        for t in range(L - 1, -1, -1):
            if t == L - 1: torch.mul(g[t, :, :, None], C[t, :, None, :], out=hbar)
            else: hbar.mul_(decay).addcmul_(g[t, :, :, None], C[t, :, None, :])
            torch.matmul(g[t, :, None, :], hs[t], out=grad_C[t, :, None, :])
            torch.matmul(hbar, B[t, :, :, None], out=grad_write[t, :, :, None])
            torch.matmul(du[t, :, None, :], hbar, out=grad_B[t, :, None, :])
            if t:
                torch.mul(delta[t, :, :, None], A, out=decay).exp_()
                torch.mul(hbar, hs[t - 1], out=x).mul_(decay)
                grad_A.addcmul_(x, delta[t, :, :, None])
                torch.sum(x.mul_(A), dim=-1, out=grad_delta_decay[t])
        grad_u = grad_write * delta
        grad_delta = grad_write * u + grad_delta_decay
        return (grad_u.transpose(0, 1), grad_delta.transpose(0, 1), grad_A.sum(0).to(A.dtype),
                grad_B.transpose(0, 1), grad_C.transpose(0, 1))


def legacy_selective_scan(u, delta, A, B, C, D):
    if torch.is_grad_enabled() and any(t.requires_grad for t in (u, delta, A, B, C)):
        y = LegacySelectiveScanFn.apply(u, delta, A, B, C)
    else:
        y = legacy_scan_states(*(t.transpose(0, 1).contiguous() for t in (u, delta)), A,
                               *(t.transpose(0, 1).contiguous() for t in (B, C)), keep_states=False)[0].transpose(0, 1)
    return y + u * D


def legacy_attend(self, h, mask):
    "The previous attention call: `nn.MultiheadAttention` in every mode."
    return self.attention(h, h, h, key_padding_mask=~mask, need_weights=False)[0]


def legacy_block_forward(self, x):
    "The previous `Mamba.forward`: `nn.Conv1d` on the transposed activations."
    L = x.shape[1]
    x, z = self.in_proj(x).chunk(2, dim=-1)
    x = F.silu(self.conv1d(x.transpose(1, 2))[..., :L].transpose(1, 2))
    dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
    delta = F.softplus(self.dt_proj(dt))
    y = self.scan(x, delta, -torch.exp(self.A_log.float()), B, C, self.D.float())
    return self.out_proj(y * F.silu(z))
# ---- end of the previous implementation ----


def variants(engines, seed=0):
    "The base model once per engine, all with the same weights (the lstm backend has its own)."
    torch.manual_seed(seed)
    now = create_mamba_attention_model(model_size=SIZE, backend='torch')
    out = {}
    for name in engines:
        if name == 'now': out[name] = now
        elif name == 'before':
            model = copy.deepcopy(now)
            for mixer in model.mixers:
                mixer.scan = legacy_selective_scan
                mixer.forward = types.MethodType(legacy_block_forward, mixer)
            model.attend = types.MethodType(legacy_attend, model)
            out[name] = model
        elif name == 'mambapy pscan':
            from mambapy.mamba import MambaBlock, MambaConfig
            model = copy.deepcopy(now)
            for i, mixer in enumerate(model.mixers):
                peer = MambaBlock(MambaConfig(d_model=mixer.d_model, n_layers=1, pscan=True))
                peer.load_state_dict(mixer.state_dict(), strict=True)
                model.mixers[i] = peer
            out[name] = model
        elif name == 'lstm': out[name] = create_mamba_attention_model(model_size=SIZE, backend='lstm')
        else: raise SystemExit(f'unknown engine {name!r}: use before, now, mambapy pscan, lstm')
    return out


def batch(b, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, L, FEATURES, generator=g)
    mask = torch.ones(b, L)
    for i in range(0, b, 4): mask[i, :int(torch.randint(1, L, (1,), generator=g))] = 0
    return x, mask, torch.randint(0, 6, (b,), generator=g)


def timed(step):
    "(wall seconds, process CPU seconds) of one call."
    w, c = time.perf_counter(), time.process_time()
    step()
    return time.perf_counter() - w, time.process_time() - c


def train_step(model, x, mask, y, loss_fn, opt):
    def step():
        model.train()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x, mask), y).backward()
        opt.step()
    return step


def infer_step(model, x, mask):
    def step():
        model.eval()
        with torch.inference_mode(): model(x, mask)
    return step


def scan_agreement(b=32, seed=3):
    "Max abs difference of the current scan vs `selective_scan_ref` at the base block's shape: y and the five gradients."
    g = torch.Generator().manual_seed(seed)
    d, n = 256, 16
    u = torch.randn(b, L, d, generator=g)
    delta = F.softplus(torch.randn(b, L, d, generator=g) - 2)
    A = -torch.arange(1, n + 1.).repeat(d, 1) * torch.rand(d, 1, generator=g)
    B, C = torch.randn(b, L, n, generator=g), torch.randn(b, L, n, generator=g)
    args = [t.requires_grad_() for t in (u, delta, A, B, C)]
    D, w = torch.ones(d), torch.randn(b, L, d, generator=g)
    rows = []
    outs = []
    for scan in (selective_scan_ref, selective_scan):
        y = scan(*args, D)
        outs.append([y.detach(), *torch.autograd.grad((y * w).sum(), args)])
    with torch.no_grad(): outs[1].append(selective_scan(*args, D))
    outs[0].append(outs[0][0])
    for name, a, c in zip(['y', 'du', 'ddelta', 'dA', 'dB', 'dC', 'y (no grad)'], *outs):
        rows.append((name, (a - c).abs().max().item(), a.abs().max().item()))
    return rows


def model_agreement(models, b=32):
    "Max abs difference of logits and parameter gradients vs `before` (same weights, eval mode)."
    if 'before' not in models or 'now' not in models: return None
    x, mask, y = batch(b, seed=2)
    loss_fn = make_loss('asymmetric')
    res = []
    for name in ('before', 'now'):
        model = copy.deepcopy(models[name]).eval()
        logits = model(x, mask)
        res.append((logits.detach(), torch.autograd.grad(loss_fn(logits, y), list(model.parameters()))))
    (l0, g0), (l1, g1) = res
    return (l0 - l1).abs().max().item(), max((a - c).abs().max().item() for a, c in zip(g0, g1)), max(a.abs().max().item() for a in g0)


def main(rounds=5, threads=2, engines=('before', 'now'), sizes=(256,)):
    torch.set_num_threads(threads)
    load_before = os.getloadavg()[0]
    models = variants(engines)
    agree = model_agreement(models)  # before any training step changes the weights
    loss_fn = make_loss('asymmetric')
    table = {}
    for b in sizes:
        x, mask, y = batch(b)
        steps = {name: {'train': train_step(m, x, mask, y, loss_fn, torch.optim.AdamW(m.parameters(), lr=1e-5)),
                        'inference': infer_step(m, x, mask)} for name, m in models.items()}
        for pair in steps.values():
            for step in pair.values(): step()  # warm-up
        best = {}
        for _ in range(rounds):  # round robin: load from other processes hits every engine alike
            for name, pair in steps.items():
                for kind, step in pair.items():
                    w, c = timed(step)
                    old = best.get((name, kind), (float('inf'), float('inf')))
                    best[(name, kind)] = (min(old[0], w), min(old[1], c))
        for name in models:
            for kind in ('train', 'inference'):
                w, c = best[(name, kind)]
                table[(name, b, kind)] = (b / w, b / c)
            print(f'  measured {name:15s} batch {b:3d}: train {table[(name, b, "train")][0]:7.1f}/s  '
                  f'inference {table[(name, b, "inference")][0]:7.1f}/s (wall)', flush=True)
    load_after = os.getloadavg()[0]

    print(f'MambaAttention {SIZE}, L={L}, {FEATURES} features, float32, {torch.get_num_threads()} threads, torch {torch.__version__}, '
          f'{os.cpu_count()} CPUs, best of {rounds}; load average {load_before:.2f} at the start, {load_after:.2f} at the end '
          '(other processes slow the wall-clock numbers of every engine)')
    print(f'{"engine":15s} {"batch":>5s} | {"train/s wall":>12s} {"train/s cpu":>12s} | {"infer/s wall":>12s} {"infer/s cpu":>12s}')
    for b in sizes:
        for name in models:
            (tw, tc), (iw, ic) = table[(name, b, 'train')], table[(name, b, 'inference')]
            print(f'{name:15s} {b:5d} | {tw:12.1f} {tc:12.1f} | {iw:12.1f} {ic:12.1f}')
    if 'before' in models and 'now' in models:
        print('\nratio now / before (samples/s; > 1 = faster now):')
        for b in sizes:
            r = [table[('now', b, k)][i] / table[('before', b, k)][i] for k in ('train', 'inference') for i in (0, 1)]
            print(f'  batch {b:3d}: train {r[0]:.2f}x wall, {r[1]:.2f}x cpu | inference {r[2]:.2f}x wall, {r[3]:.2f}x cpu')
    if 256 in sizes and 'now' in models:
        (tw, tc), (iw, ic) = table[('now', 256, 'train')], table[('now', 256, 'inference')]
        print(f'\ntargets at batch 256 (wall): train >= 400/s: {tw:.0f} ({"met" if tw >= 400 else "MISSED"}); '
              f'inference >= 2000/s: {iw:.0f} ({"met" if iw >= 2000 else "MISSED"})')
    print('\nscan vs selective_scan_ref (batch 32, L=50, D=256, N=16):')
    print(f'{"tensor":12s} {"max |diff|":>11s} {"max |ref|":>10s}')
    for name, diff, mag in scan_agreement():
        print(f'{name:12s} {diff:11.2e} {mag:10.2e}   relative to max(1, |ref|): {diff / max(1.0, mag):.1e} (tests allow 1e-5)')
    if agree:
        print(f'\nnow vs before (base model, batch 32, eval): max |d logits| {agree[0]:.2e}, max |d grad| {agree[1]:.2e} (max |grad| {agree[2]:.2e})')


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=5, help='timed calls per engine (best is kept)')
    parser.add_argument('--threads', type=int, default=2, help='torch threads')
    parser.add_argument('--engines', default='before,now', help='comma-separated: before, now, mambapy pscan, lstm')
    parser.add_argument('--batch', default='256', help='comma-separated batch sizes')
    a = parser.parse_args()
    main(a.rounds, a.threads, tuple(a.engines.split(',')), tuple(int(b) for b in a.batch.split(',')))
