"""GPU readiness: the `cuda` backend (mamba-ssm's kernels) against the CPU model on the same weights, and its speed.

On a machine with a CUDA GPU and the `cuda` extra (`pip install 'k4_nbdev[cuda]'`: mamba-ssm, causal-conv1d) it

1. builds each model size on the CPU (`backend='torch'`, the compiled scan) and on the GPU (`backend='cuda'`), and
   loads the state dict both ways, strictly (the parameter names and shapes are mamba-ssm's);
2. compares logits on the same padded batch: CPU model vs the GPU model holding its weights (and the GPU model's
   weights loaded back into a CPU model), relative to the largest logit (bound: 1e-4; mamba-ssm's kernels use
   their own exp and summation order in float32);
3. compares the gradients of the asymmetric loss for every parameter, GPU vs CPU (relative to the largest);
4. times training steps (forward + loss + backward + AdamW) and inference on the GPU, `torch` backend (the pure
   PyTorch scan on CUDA) and `cuda` backend, in samples/s at each batch size, with CUDA synchronisation.

Without CUDA or mamba-ssm it says which is missing and exits with status 2 (nothing to check).

    python benchmarks/bench_gpu.py [--sizes small,base] [--batch 256,1024] [--rounds 10] [--out gpu.csv]
"""
import argparse
import sys
import time

import pandas as pd
import torch

from k4_nbdev.loss import make_loss
from k4_nbdev.model import create_mamba_attention_model, mamba_ssm_available

L, FEATURES = 50, 69


def batch(b, device, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, L, FEATURES, generator=g)
    mask = torch.ones(b, L)
    for i in range(0, b, 4): mask[i, :int(torch.randint(1, L, (1,), generator=g))] = 0
    return x.to(device), mask.to(device), torch.randint(0, 6, (b,), generator=g).to(device)


def rel(a, b):
    return ((a.detach().float().cpu() - b.detach().float().cpu()).abs().max() / b.detach().float().cpu().abs().max().clamp_min(1e-30)).item()


def agreement(size):
    "Strict state-dict loads both ways and the relative differences of logits and gradients, GPU vs CPU."
    torch.manual_seed(0)
    cpu = create_mamba_attention_model(model_size=size, backend='torch').eval()
    gpu = create_mamba_attention_model(model_size=size, backend='cuda').cuda().eval()
    gpu.load_state_dict(cpu.state_dict(), strict=True)
    back = create_mamba_attention_model(model_size=size, backend='torch').eval()
    back.load_state_dict({k: v.cpu() for k, v in gpu.state_dict().items()}, strict=True)
    x, mask, y = batch(64, 'cpu')
    loss_fn = make_loss('asymmetric')
    lc, lg = cpu(x, mask), gpu(x.cuda(), mask.cuda())
    gc = torch.autograd.grad(loss_fn(lc, y), list(cpu.parameters()))
    gg = torch.autograd.grad(loss_fn(lg, y.cuda()), list(gpu.parameters()))
    return {'size': size, 'state dict both ways': 'strict', 'logits gpu vs cpu': rel(lg, lc),
            'logits loaded back vs cpu': rel(back(x, mask), lc),
            'grads gpu vs cpu (max over parameters)': max(rel(a, b) for a, b in zip(gg, gc))}


def timed(step, rounds):
    step(); torch.cuda.synchronize()
    best = float('inf')
    for _ in range(rounds):
        t = time.perf_counter(); step(); torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def speed(size, backend, b, rounds):
    torch.manual_seed(0)
    model = create_mamba_attention_model(model_size=size, backend=backend).cuda()
    x, mask, y = batch(b, 'cuda')
    loss_fn, opt = make_loss('asymmetric'), torch.optim.AdamW(model.parameters(), lr=1e-5)
    def train():
        model.train(); opt.zero_grad(set_to_none=True)
        loss_fn(model(x, mask), y).backward(); opt.step()
    def infer():
        model.eval()
        with torch.inference_mode(): model(x, mask)
    return {'size': size, 'backend': backend, 'batch': b,
            'train/s': b / timed(train, rounds), 'infer/s': b / timed(infer, rounds)}


def main(sizes, batches, rounds, out):
    missing = ('no CUDA device here (torch.cuda.is_available() is False)' if not torch.cuda.is_available() else
               "mamba-ssm does not import here: pip install 'k4_nbdev[cuda]'" if not mamba_ssm_available() else None)
    if missing:
        print(f'bench_gpu: {missing}: nothing to check', file=sys.stderr)
        return 2
    print(f'{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}')
    agree = pd.DataFrame([agreement(s) for s in sizes])
    print(agree.to_string(index=False))
    ok = (agree[['logits gpu vs cpu', 'logits loaded back vs cpu']] <= 1e-4).all().all()
    print(f'logits within 1e-4 (relative): {"yes" if ok else "NO"}')
    rows = [speed(s, backend, b, rounds) for s in sizes for backend in ('torch', 'cuda') for b in batches]
    table = pd.DataFrame(rows)
    print(table.round(1).to_string(index=False))
    if out:
        agree.to_csv(out.replace('.csv', '_agreement.csv'), index=False)
        table.to_csv(out, index=False)
    return 0 if ok else 1


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', default='small,base', help='comma-separated model sizes')
    parser.add_argument('--batch', default='256,1024', help='comma-separated batch sizes')
    parser.add_argument('--rounds', type=int, default=10, help='timed calls (best is kept)')
    parser.add_argument('--out', help='CSV for the speed table (the agreement goes beside it, *_agreement.csv)')
    a = parser.parse_args()
    sys.exit(main(a.sizes.split(','), [int(b) for b in a.batch.split(',')], a.rounds, a.out))
