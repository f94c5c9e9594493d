"The losses: hand-computed values, an independent numpy implementation, focusing, class weights, stability, K4 focus."
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from k4_nbdev.definitions import CLASS_NAMES, K4, STRATEGIC_VALUES
from k4_nbdev.loss import (CLASS_WEIGHTS, AsymmetricLoss, FocalLoss, make_loss, k4_focus,
                           positive_term, negative_term, LOSSES)


def numpy_asymmetric(logits, targets, weights, gamma_pos=0.0, gamma_neg=4.0, margin=0.05):
    "The issue's definition, written independently in float64 numpy."
    z = logits - logits.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    out = []
    for row, y in zip(p, targets):
        loss = -(1 - row[y]) ** gamma_pos * np.log(row[y])
        for k, pk in enumerate(row):
            if k == y: continue
            pm = max(pk - margin, 0.0)
            loss -= pm ** gamma_neg * np.log(1 - pm)
        out.append(weights[y] * loss)
    return np.mean(out)


def test_constants():
    assert CLASS_NAMES == ['K0_STAGNANT', 'K1_MINIMAL', 'K2_QUALITY', 'K3_STRONG', 'K4_EXCEPTIONAL', 'K5_FAILED']
    assert STRATEGIC_VALUES == [-2.0, -0.2, 1.0, 3.0, 10.0, -10.0]
    assert CLASS_WEIGHTS == [1.0, 1.0, 2.0, 10.0, 50.0, 5.0] and K4 == 4


def test_hand_computed_values():
    loss = AsymmetricLoss()
    # equal logits: every p = 1/6
    neg = (1 / 6 - 0.05) ** 4 * -math.log(1 - (1 / 6 - 0.05))
    assert loss(torch.zeros(1, 6), torch.tensor([0])).item() == pytest.approx(math.log(6) + 5 * neg, rel=1e-6)
    # two classes carry all the mass: p = (0.5, 0.5, 0, ...) in float32 up to e^-40
    z = torch.tensor([[40.0, 40.0, 0.0, 0.0, 0.0, 0.0]])
    expected = math.log(2) + 0.45 ** 4 * -math.log(0.55)
    assert loss(z, torch.tensor([0])).item() == pytest.approx(expected, rel=1e-5)
    assert loss(z, torch.tensor([3])).item() == pytest.approx(10 * (40 + 2 * 0.45 ** 4 * -math.log(0.55) + math.log(2)), rel=1e-5)
    # a confident correct answer costs (almost) nothing
    assert loss(torch.tensor([[0.0, 0, 0, 0, 30, 0]]), torch.tensor([4])).item() == pytest.approx(0.0, abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.1, 20), gamma_pos=st.sampled_from([0.0, 1.0, 2.0]),
       gamma_neg=st.sampled_from([0.0, 1.0, 4.0]), margin=st.sampled_from([0.0, 0.05, 0.2]))
def test_matches_independent_numpy_implementation(seed, scale, gamma_pos, gamma_neg, margin):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(16, 6)) * scale
    targets = rng.integers(0, 6, 16)
    weights = rng.uniform(0.5, 20, 6)
    if margin == 0.0:  # log(1 - p) is taken from p, so a wrong class near p = 1 is only float32-accurate: keep logits moderate
        logits = logits * min(1.0, 3.0 / scale)
    ours = AsymmetricLoss(weights.tolist(), gamma_pos, gamma_neg, margin)(torch.tensor(logits, dtype=torch.float32), torch.tensor(targets))
    assert ours.item() == pytest.approx(numpy_asymmetric(logits, targets, weights, gamma_pos, gamma_neg, margin), rel=1e-4, abs=1e-5)


def test_easy_negatives_contribute_far_less_with_focusing():
    # true class 0 at ~0.5, every wrong class at ~0.1: easy negatives
    logits = torch.log(torch.tensor([[0.5, 0.1, 0.1, 0.1, 0.1, 0.1]]))
    targets = torch.tensor([0])
    positive = -math.log(0.5)
    focused = AsymmetricLoss(None, gamma_neg=4.0)(logits, targets).item() - positive
    unfocused = AsymmetricLoss(None, gamma_neg=0.0)(logits, targets).item() - positive
    assert focused > 0 and focused < unfocused / 1000
    # below the margin they cost exactly nothing
    low = torch.log(torch.tensor([[0.8, 0.04, 0.04, 0.04, 0.04, 0.04]]))
    assert AsymmetricLoss(None)(low, targets).item() == pytest.approx(-math.log(0.8), rel=1e-6)


def test_k4_sample_weighs_50_times_k0_with_identical_logits():
    logits = torch.randn(1, 6).repeat(2, 1)
    per_sample = make_loss('asymmetric').per_sample(logits, torch.tensor([0, 4]))
    unweighted = make_loss('asymmetric', class_weights=None).per_sample(logits, torch.tensor([0, 4]))
    assert (per_sample / unweighted).tolist() == pytest.approx([1.0, 50.0])
    assert make_loss('asymmetric', class_weights=[1, 1, 2, 10, 1000, 5]).per_sample(logits[:1], torch.tensor([4])).item() == \
        pytest.approx(1000 * unweighted[1].item(), rel=1e-6)


@pytest.mark.parametrize('loss', [make_loss('asymmetric'), make_loss('asymmetric', margin=0.0, gamma_pos=0.5, gamma_neg=0.5),
                                  make_loss('focal'), make_loss('focal', gamma=0.5), make_loss('cross_entropy')])
def test_finite_at_extreme_logits(loss):
    logits = torch.tensor([[1e4, -1e4, 0, 0, 0, 0], [-1e4, 1e4, 0, 0, 0, 0], [0, 0, 0, 0, 1e4, -1e4]], requires_grad=True)
    for targets in ([0, 0, 4], [1, 0, 5], [5, 5, 5]):
        value = loss(logits, torch.tensor(targets))
        grad, = torch.autograd.grad(value, logits)
        assert torch.isfinite(value) and torch.isfinite(grad).all()


def test_cross_entropy_and_focal():
    torch.manual_seed(0)
    logits, targets = torch.randn(32, 6), torch.randint(0, 6, (32,))
    assert torch.allclose(make_loss('cross_entropy', class_weights=None)(logits, targets), F.cross_entropy(logits, targets))
    w = torch.tensor(CLASS_WEIGHTS)
    assert torch.allclose(make_loss('cross_entropy')(logits, targets),
                          (F.cross_entropy(logits, targets, reduction='none') * w[targets]).mean())
    p = F.softmax(logits, -1)[torch.arange(32), targets]
    assert torch.allclose(make_loss('focal', gamma=2.0)(logits, targets), (-(1 - p) ** 2 * torch.log(p) * w[targets]).mean(), rtol=1e-5)
    assert torch.allclose(make_loss('asymmetric', gamma_neg=0.0, margin=1.0)(logits, targets), make_loss('cross_entropy')(logits, targets))
    assert set(LOSSES) == {'asymmetric', 'focal', 'cross_entropy'}
    assert isinstance(make_loss('focal'), FocalLoss)


def test_terms():
    p = torch.tensor([0.0, 0.05, 0.3, 1.0])
    assert torch.allclose(negative_term(p), torch.tensor([0.0, 0.0, 0.25 ** 4 * -math.log(0.75), 0.95 ** 4 * -math.log(0.05)]))
    assert torch.allclose(positive_term(torch.log(torch.tensor([0.25])), 1.0), torch.tensor([0.75 * math.log(4)]))


@pytest.mark.parametrize('call, error, message', [
    (lambda l: l(torch.zeros(2, 6), torch.tensor([0, 7])), ValueError, r'out of range 0..5 in batch rows \[1\]: values \[7\]'),
    (lambda l: l(torch.zeros(2, 6), torch.tensor([-1, 0])), ValueError, r'batch rows \[0\]'),
    (lambda l: l(torch.zeros(2, 6), torch.tensor([0.0, 1.0])), TypeError, 'integer class indices'),
    (lambda l: l(torch.zeros(2, 6), torch.tensor([0, 1, 2])), ValueError, r'targets must have shape \(2,\)'),
    (lambda l: l(torch.zeros(6), torch.tensor([0])), ValueError, 'logits must have shape'),
    (lambda l: l(torch.zeros(2, 5), torch.tensor([0, 1])), ValueError, 'class_weights has 6 entries but the logits have 5'),
    (lambda l: l(torch.tensor([[0.0] * 6, [float('nan')] * 6]), torch.tensor([0, 1])), ValueError, r'NaN or infinite in batch rows \[1\]'),
])
def test_bad_batches_raise_clear_errors(call, error, message):
    with pytest.raises(error, match=message):
        call(make_loss('asymmetric'))


def test_bad_configuration():
    with pytest.raises(ValueError, match='loss must be one of'):
        make_loss('hinge')
    with pytest.raises(ValueError, match='class_weights must be'):
        make_loss(class_weights=[1, -1, 1, 1, 1, 1])


def test_k4_focus():
    logits = torch.zeros(5, 6)
    logits[0, K4] = 5.0  # the only K4 predicted right
    targets = torch.tensor([4, 4, 0, 1, 5])
    per_sample = torch.tensor([1.0, 3.0, 2.0, 2.0, 2.0])
    focus = k4_focus(logits, targets, per_sample)
    assert focus == pytest.approx({'k4_count': 2, 'k4_loss_share': 0.4, 'k4_accuracy': 0.5})
    none = k4_focus(logits[2:], targets[2:], per_sample[2:])
    assert none['k4_count'] == 0 and math.isnan(none['k4_accuracy']) and none['k4_loss_share'] == 0.0
