"The model: compiled and fused scans vs plain reference and mambapy, mamba-ssm parameter layout, padding, causality, backends, checkpoints."
import io
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mambapy.mamba import MambaBlock, MambaConfig

from k4_nbdev.scoring import predict_proba
from k4_nbdev.core import build_library
from k4_nbdev.model import (Mamba, MambaAttention, MODEL_SIZES, selective_scan, selective_scan_ref, create_mamba_attention_model,
                            compiled_scan, SCAN_SOURCE,
                            count_parameters, check_inputs, resolve_backend, make_mixer, mamba_ssm_available, BiLSTMMixer,
                            module_shapes, causal_conv1d)
from k4_nbdev.testing import scan_inputs

# mamba-ssm's Mamba(d_model=128) (mamba_ssm/modules/mamba_simple.py): d_inner 256, dt_rank 8, d_state 16, d_conv 4.
MAMBA_SSM_PARAMETERS_D128 = {
    'A_log': (256, 16),
    'D': (256,),
    'in_proj.weight': (512, 128),
    'conv1d.weight': (256, 1, 4),
    'conv1d.bias': (256,),
    'x_proj.weight': (40, 256),
    'dt_proj.weight': (256, 8),
    'dt_proj.bias': (256,),
    'out_proj.weight': (128, 256),
}


def value_and_grads(f, args, weight):
    y = f(*args)
    return [y, *torch.autograd.grad((y * weight).sum(), args)]


def assert_close(a, b, tol=1e-5):
    "Agreement to tol, relative to the magnitude when it exceeds 1."
    err = (a - b).abs().max().item()
    assert err <= tol * max(1.0, a.abs().max().item()), f'max abs error {err:.3g}'


@pytest.mark.parametrize('kernel', ['torch', 'compiled'])
@pytest.mark.parametrize('seed', range(3))
def test_fast_scans_equal_reference_forward_and_gradients(seed, kernel):
    args = scan_inputs(seed=seed)
    weight = torch.randn(3, 9, 5, generator=torch.Generator().manual_seed(seed + 10))
    fast = lambda *a: selective_scan(*a, kernel=kernel)
    for ref, got in zip(value_and_grads(selective_scan_ref, args, weight), value_and_grads(fast, args, weight)):
        assert_close(ref, got)
    with torch.no_grad(): assert_close(selective_scan_ref(*args), fast(*args))


def test_compiled_scan_is_built_here():
    "The machines this project runs on have a C compiler: the compiled kernel must be there, with OpenMP."
    lib, how = compiled_scan()
    assert lib is not None, how
    assert '-fopenmp' in how


@pytest.mark.parametrize('kernel', ['torch', 'compiled'])
@pytest.mark.parametrize('d, softplus', [(16, True), (37, True), (37, False)])
def test_full_scan_at_block_shapes_and_strides(d, softplus, kernel):
    """mamba-ssm's full interface (step bias and softplus, skip D, gate z) on full and partial 16-channel blocks, with B, C
    and z as strided views, as the block passes them: values and all eight gradients."""
    g = torch.Generator().manual_seed(d)
    u, delta, A, _, _, _ = scan_inputs(b=4, L=50, d=d, n=16, seed=d)
    raw = torch.log(torch.expm1(delta)) if softplus else delta        # so that the steps are the same small ones
    proj, xz = torch.randn(4, 50, 3 + 32, generator=g), torch.randn(4, 50, 2 * d, generator=g)
    D, bias = torch.rand(d, generator=g) + 0.5, torch.rand(d, generator=g) * 0.01
    args = [t.detach().requires_grad_() for t in (u, raw, A, proj[..., 3:19], proj[..., 19:], D, xz[..., d:], bias)]
    weight = torch.randn(4, 50, d, generator=g)
    ref = lambda *a: selective_scan_ref(*a, delta_softplus=softplus)
    fast = lambda *a: selective_scan(*a, delta_softplus=softplus, kernel=kernel)
    for want, got in zip(value_and_grads(ref, args, weight), value_and_grads(fast, args, weight)):
        assert_close(want, got)
    with torch.no_grad(): assert_close(ref(*args), fast(*args))


def test_compiled_scan_does_not_depend_on_the_thread_count():
    "Rows are split between threads and A's gradient is summed per row: 1 and 2 threads give the same bits."
    args = [t.detach().requires_grad_() for t in scan_inputs(b=7, L=20, d=33, n=16, seed=3)]
    weight = torch.randn(7, 20, 33)
    threads = torch.get_num_threads()
    try:
        runs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            runs.append(value_and_grads(lambda *a: selective_scan(*a, kernel='compiled'), args, weight))
    finally: torch.set_num_threads(threads)
    for a, b in zip(*runs): assert torch.equal(a, b)


def test_scan_kernel_choice():
    "float64 takes the torch kernel under 'auto' and is refused by 'compiled'; an unknown kernel is named."
    args = [t.double() for t in scan_inputs(seed=2)]
    assert_close(selective_scan_ref(*args), selective_scan(*args), tol=1e-12)
    with pytest.raises(ValueError, match='float32 tensors on the CPU'): selective_scan(*args, kernel='compiled')
    with pytest.raises(ValueError, match="kernel must be one of"): selective_scan(*args, kernel='c')


def test_two_processes_build_the_kernel_at_once(tmp_path):
    "Dask workers or torchrun ranks may build the kernel together: both load a whole library, one file stays, no temporary."
    code = ('import sys; from k4_nbdev.core import build_library; from k4_nbdev.model import SCAN_SOURCE; '
            'lib, how = build_library(SCAN_SOURCE, "selective_scan"); sys.exit(lib is None)')
    env = {**os.environ, 'K4_CACHE': str(tmp_path)}
    runs = [subprocess.Popen([sys.executable, '-c', code], env=env) for _ in range(2)]
    assert [r.wait(timeout=300) for r in runs] == [0, 0]
    assert len([p for p in tmp_path.iterdir() if p.suffix == '.so']) == 1
    assert not [p for p in tmp_path.iterdir() if '.tmp-' in p.name]


def test_no_compiler_means_no_library_and_a_reason(tmp_path, monkeypatch):
    "Without a working compiler the kernel is absent (None), the reason names the compiler, and nothing is left in the cache."
    monkeypatch.setenv('K4_CACHE', str(tmp_path))
    monkeypatch.setenv('CC', str(tmp_path / 'no-such-cc'))
    lib, why = build_library(SCAN_SOURCE, 'selective_scan')
    assert lib is None and 'no-such-cc' in why
    assert not [p for p in tmp_path.iterdir() if p.suffix == '.so' or '.tmp-' in p.name]


def test_torch_scan_is_exact_in_float64():
    args = [t.detach().double().requires_grad_() for t in scan_inputs(seed=5)]
    weight = torch.randn(3, 9, 5, dtype=torch.float64)
    for ref, fast in zip(value_and_grads(selective_scan_ref, args, weight), value_and_grads(selective_scan, args, weight)):
        assert_close(ref, fast, tol=1e-12)


def test_block_with_reference_scan_equals_fused_block():
    torch.manual_seed(0)
    fast = Mamba(16)
    ref = Mamba(16, scan=selective_scan_ref)
    ref.load_state_dict(fast.state_dict(), strict=True)
    x = torch.randn(2, 11, 16, requires_grad=True)
    y_fast, y_ref = fast(x), ref(x)
    assert_close(y_ref, y_fast)
    g_fast = torch.autograd.grad(y_fast.pow(2).sum(), [x, *fast.parameters()])
    g_ref = torch.autograd.grad(y_ref.pow(2).sum(), [x, *ref.parameters()])
    for a, b in zip(g_ref, g_fast): assert_close(a, b)


@pytest.mark.parametrize('pscan', [True, False])
def test_block_equals_mambapy_given_the_same_weights(pscan):
    torch.manual_seed(0)
    ours = Mamba(16)
    peer = MambaBlock(MambaConfig(d_model=16, n_layers=1, pscan=pscan))
    peer.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 13, 16, requires_grad=True)
    y_ours, y_peer = ours(x), peer(x)
    assert_close(y_peer, y_ours)
    weight = torch.randn_like(y_ours)
    names = [n for n, _ in ours.named_parameters()]
    g_ours = dict(zip(['x', *names], torch.autograd.grad((y_ours * weight).sum(), [x, *ours.parameters()])))
    peer_params = dict(peer.named_parameters())
    g_peer = dict(zip(['x', *names], torch.autograd.grad((y_peer * weight).sum(), [x, *(peer_params[n] for n in names)])))
    for name in g_ours: assert_close(g_peer[name], g_ours[name])


def test_parameter_names_and_shapes_equal_mamba_ssm():
    params = {n: tuple(p.shape) for n, p in Mamba(128).named_parameters()}
    assert params == MAMBA_SSM_PARAMETERS_D128


def test_initialisation_follows_mamba_ssm():
    torch.manual_seed(0)
    block = Mamba(128)
    assert torch.equal(block.A_log.data, torch.log(torch.arange(1, 17.)).repeat(256, 1))
    assert torch.equal(block.D.data, torch.ones(256))
    steps = F.softplus(block.dt_proj.bias.detach())
    assert steps.min() >= 1e-3 * (1 - 1e-5) and steps.max() <= 0.1 * (1 + 1e-5)
    assert block.dt_proj.weight.abs().max() <= 8 ** -0.5
    assert block.A_log._no_weight_decay and block.D._no_weight_decay
    assert block.in_proj.bias is None and block.out_proj.bias is None and block.x_proj.bias is None
    no_decay = {n for n, p in block.named_parameters() if getattr(p, '_no_weight_decay', False)}
    assert no_decay == {'A_log', 'D'}


def padded_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 12, 69, generator=g)
    mask = torch.ones(4, 12)
    mask[0, :5] = 0
    mask[2, :11] = 0
    noisy = x.clone()
    noisy[mask == 0] = torch.randn(int((mask == 0).sum()), 69, generator=g) * 1e3
    noisy[0, 1, 7] = float('nan')
    noisy[2, 0, 0] = float('inf')
    return x, noisy, mask


@pytest.mark.parametrize('backend', ['torch', 'lstm'])
@pytest.mark.parametrize('grad', [False, True])
def test_padded_contents_never_change_the_logits(backend, grad):
    torch.manual_seed(0)
    model = create_mamba_attention_model(model_size='small', backend=backend).eval()
    x, noisy, mask = padded_batch()
    with torch.set_grad_enabled(grad):
        assert torch.equal(model(x, mask), model(noisy, mask))
        assert torch.equal(model(x, mask.bool()), model(noisy, mask))


def test_all_padded_rows_raise_naming_the_rows():
    model = create_mamba_attention_model(model_size='small', backend='torch')
    x, _, mask = padded_batch()
    mask[1] = 0
    mask[3] = 0
    with pytest.raises(ValueError, match=r'batch rows \[1, 3\] are all padding'):
        model(x, mask)


@pytest.mark.parametrize('bad, message', [
    (lambda x, m: (x[..., :68], m), r'x must have shape \(batch, seq_len, 69\)'),
    (lambda x, m: (x[0], m), r'x must have shape'),
    (lambda x, m: (x, m[:, 1:]), r'mask must have shape'),
    (lambda x, m: (x, m * 3), r'only 0/1'),
])
def test_bad_inputs_raise_clear_errors(bad, message):
    model = create_mamba_attention_model(model_size='small', backend='torch')
    x, _, mask = padded_batch()
    with pytest.raises(ValueError, match=message):
        model(*bad(x, mask))


def test_mamba_stack_is_causal():
    torch.manual_seed(0)
    model = create_mamba_attention_model(model_size='small', backend='torch').eval()
    x, _, mask = padded_batch()
    m = check_inputs(x, mask, 69)
    for t in range(0, 12, 3):
        later = x.clone()
        later[:, t + 1:] = torch.randn_like(later[:, t + 1:])
        with torch.no_grad():
            before, after = model.encode(x, m), model.encode(later, m)
        assert torch.equal(before[:, :t + 1], after[:, :t + 1])
    block = Mamba(8)
    y = torch.randn(2, 10, 8, requires_grad=True)
    grad, = torch.autograd.grad(block(y)[:, 4].sum(), y)
    assert grad[:, 5:].abs().max() == 0 and grad[:, :5].abs().max() > 0


def test_checkpoint_round_trip_gives_identical_outputs():
    torch.manual_seed(0)
    model = create_mamba_attention_model(model_size='small', backend='torch').eval()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(1)
    loaded = create_mamba_attention_model(model_size='small', backend='torch').eval()
    loaded.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    x, _, mask = padded_batch()
    with torch.no_grad():
        assert torch.equal(model(x, mask), loaded(x, mask))


class FakeMambaSSM(MambaBlock):
    "Stands in for mamba_ssm.Mamba here (no CUDA): mamba-ssm's constructor, mambapy's maths."
    def __init__(self, d_model, d_state=16, d_conv=4, expand=2):
        super().__init__(MambaConfig(d_model=d_model, n_layers=1, d_state=d_state, d_conv=d_conv, expand_factor=expand))


@pytest.fixture
def fake_cuda_backend(monkeypatch):
    monkeypatch.setitem(sys.modules, 'mamba_ssm', types.SimpleNamespace(Mamba=FakeMambaSSM))
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)


def test_state_dict_moves_between_torch_and_cuda_backends(fake_cuda_backend):
    assert mamba_ssm_available() and resolve_backend('auto') == 'cuda'
    torch.manual_seed(0)
    cpu = create_mamba_attention_model(model_size='small', backend='torch').eval()
    gpu = create_mamba_attention_model(model_size='small', backend='cuda').eval()
    assert isinstance(gpu.mixers[0], FakeMambaSSM)
    x, _, mask = padded_batch()
    gpu.load_state_dict(cpu.state_dict(), strict=True)
    with torch.no_grad(): assert_close(cpu(x, mask), gpu(x, mask))
    torch.manual_seed(3)
    trained_on_gpu = create_mamba_attention_model(model_size='small', backend='cuda').eval()
    cpu.load_state_dict(trained_on_gpu.state_dict(), strict=True)
    with torch.no_grad(): assert_close(trained_on_gpu(x, mask), cpu(x, mask))


def test_backend_resolution():
    assert resolve_backend('torch') == 'torch' and resolve_backend('lstm') == 'lstm'
    with pytest.raises(ValueError, match='backend must be one of'):
        resolve_backend('gpu')
    if not mamba_ssm_available():
        assert resolve_backend('auto') == 'torch'
        with pytest.raises(RuntimeError, match='needs a CUDA GPU and the mamba-ssm package'):
            make_mixer(16, 'cuda')
    assert isinstance(make_mixer(16, 'lstm'), BiLSTMMixer) and isinstance(make_mixer(16, 'torch'), Mamba)
    with pytest.raises(ValueError, match='model_size must be one of'):
        create_mamba_attention_model(model_size='huge')
    with pytest.raises(ValueError, match='must divide d_model'):
        MambaAttention(d_model=30, n_heads=4)


def test_preset_parameter_counts():
    counts = {size: count_parameters(create_mamba_attention_model(model_size=size, backend='torch')) for size in MODEL_SIZES}
    assert counts == {'small': 285062, 'base': 539782, 'large': 1892998}
    for d in (64, 128, 256): assert count_parameters(Mamba(d)) == 6.25 * d ** 2 + 110 * d


@pytest.mark.parametrize('backend', ['torch', 'lstm'])
def test_scoring_probabilities(backend):
    "The one path from a network to probabilities (`scoring.predict_proba`) works on every backend."
    model = create_mamba_attention_model(model_size='small', backend=backend).train()
    x, _, mask = padded_batch()
    p = predict_proba(model, x.numpy(), mask.numpy(), batch_size=3)
    assert p.shape == (4, 6) and np.allclose(p.sum(-1), 1, atol=1e-6)
    with torch.no_grad(): expected = torch.softmax(model.eval()(x, mask), -1).numpy()
    assert np.allclose(p, expected, atol=1e-6)
    assert model(x).shape == (4, 6)


def test_training_step_reaches_every_parameter():
    torch.manual_seed(0)
    model = create_mamba_attention_model(model_size='small', backend='torch')
    x, _, mask = padded_batch()
    F.cross_entropy(model(x, mask), torch.tensor([0, 1, 4, 5])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing


def test_module_shapes_table():
    model = create_mamba_attention_model(model_size='small', backend='torch')
    table = module_shapes(model, torch.randn(2, 7, 69), torch.ones(2, 7))
    rows = dict(zip(table['module'], table['output shape']))
    assert rows['input_proj'] == (2, 7, 64) and rows['mixers.0.in_proj'] == (2, 7, 256) and rows['head'] == (2, 6)


@pytest.mark.parametrize('chunk', [None, 1, 2, 3, 16, 64])
def test_scan_result_does_not_depend_on_the_batch_slices(chunk):
    "The batch is scanned in slices of `chunk` rows (a speed setting): any slicing, even one that leaves a short last slice, gives the reference."
    args = scan_inputs(b=5, seed=7)
    weight = torch.randn(5, 9, 5, generator=torch.Generator().manual_seed(17))
    fast = lambda *a: selective_scan(*a, chunk=chunk, kernel='torch')
    for ref, got in zip(value_and_grads(selective_scan_ref, args, weight), value_and_grads(fast, args, weight)):
        assert_close(ref, got)
    with torch.no_grad(): assert_close(selective_scan_ref(*args), fast(*args))


def test_causal_conv_equals_the_blocks_conv1d():
    torch.manual_seed(3)
    conv = torch.nn.Conv1d(6, 6, 4, groups=6, padding=3, bias=True)
    x = torch.randn(2, 7, 6, requires_grad=True)
    ref = conv(x.transpose(1, 2))[..., :7].transpose(1, 2)
    got = causal_conv1d(x, conv.weight, conv.bias)
    assert_close(ref, got, tol=1e-6)
    w = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad((ref * w).sum(), [x, conv.weight, conv.bias]),
                    torch.autograd.grad((got * w).sum(), [x, conv.weight, conv.bias])):
        assert_close(a, b, tol=1e-6)


@pytest.mark.parametrize('training', [False, True])
def test_fast_attention_equals_multihead_attention(training):
    "Without attention dropout (eval mode, or dropout 0) `attend` runs F.scaled_dot_product_attention on the module's own weights."
    torch.manual_seed(4)
    model = create_mamba_attention_model(model_size='small', backend='torch', dropout=0.0 if training else 0.1).train(training)
    h = torch.randn(3, 8, model.attention.embed_dim, requires_grad=True)
    mask = torch.ones(3, 8, dtype=torch.bool)
    mask[1, :5] = False
    ref = model.attention(h, h, h, key_padding_mask=~mask, need_weights=False)[0]
    got = model.attend(h, mask)
    assert_close(ref, got, tol=1e-6)
    params = [h, model.attention.in_proj_weight, model.attention.out_proj.weight]
    for a, b in zip(torch.autograd.grad(ref.sum(), params), torch.autograd.grad(got.sum(), params)):
        assert_close(a, b, tol=1e-5)
