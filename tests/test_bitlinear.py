"""The torch BitLinear against the numpy quantizer maths (mote_edge.quant.ternary) and the formula."""

import numpy as np
import pytest

from conftest import import_oracle

torch = import_oracle("torch")

from mote_edge.exporters.reference.bitlinear import BitLinear, quantize_activations, ternarize_weight  # noqa: E402
from mote_edge.quant.ternary import absmean_ternarize, bitlinear_reference, quantize_activations_int8  # noqa: E402


def test_formula_on_a_hand_example():
    w = np.array([[0.3, -0.05, -0.9, 0.0], [0.1, 0.2, -0.2, 0.6]], np.float32)
    gamma = np.abs(w).mean()  # 0.29375
    trits, g = absmean_ternarize(w)
    assert g == pytest.approx(gamma)
    # w / gamma = [1.02, -0.17, -3.06, 0], [0.34, 0.68, -0.68, 2.04] -> round, clip
    assert trits.tolist() == [[1, 0, -1, 0], [0, 1, -1, 1]]
    x = np.array([[0.5, -1.0, 0.25, 0.0]], np.float32)
    xq, s = quantize_activations_int8(x)
    assert s[0] == pytest.approx(127.0)
    assert xq.tolist() == [[64, -127, 32, 0]]  # 63.5 rounds half to even -> 64
    y = bitlinear_reference(x, trits, g)
    assert y[0].tolist() == pytest.approx([(64 - 32) * gamma / 127, (-127 - 32) * gamma / 127])


def test_torch_bitlinear_equals_numpy_reference():
    rng = np.random.default_rng(0)
    layer = BitLinear(96, 40).eval()
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(rng.normal(0, 0.02, (40, 96)).astype(np.float32)))
    x = rng.normal(0, 1, (7, 96)).astype(np.float32)
    x[3] = 0  # an all-zero token must not divide by zero
    trits, gamma = absmean_ternarize(layer.weight.detach().numpy())
    t_trits, t_gamma = ternarize_weight(layer.weight.detach())
    assert np.array_equal(t_trits.numpy().astype(np.int8), trits)
    xq, s = quantize_activations_int8(x)
    t_xq, t_s = quantize_activations(torch.from_numpy(x))
    assert np.array_equal(t_xq.numpy().astype(np.int8), xq)
    np.testing.assert_allclose(t_s.numpy()[:, 0], s, rtol=1e-7)
    with torch.no_grad():
        got = layer(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, bitlinear_reference(x, trits, gamma), rtol=1e-6, atol=1e-7)
    assert np.all(got[3] == 0)


def test_extreme_activations_saturate_at_127():
    xq, s = quantize_activations_int8(np.array([[1e30, -1e30, 1.0]], np.float32))
    assert xq.tolist() == [[127, -127, 0]]


def test_training_forward_uses_quantized_values_and_passes_gradients():
    torch.manual_seed(0)
    layer = BitLinear(32, 8)
    x = torch.randn(5, 32, requires_grad=True)
    layer.eval()
    with torch.no_grad():
        y_eval = layer(x)
    layer.train()
    y = layer(x)
    torch.testing.assert_close(y, y_eval, rtol=1e-5, atol=1e-6)  # STE forward = quantized forward
    y.sum().backward()
    trits, gamma = ternarize_weight(layer.weight.detach())
    xq, s = quantize_activations(x.detach())
    # straight-through: dL/dW = dL/dy^T (xq / s), dL/dx = dL/dy (Wt * gamma)
    torch.testing.assert_close(layer.weight.grad, torch.ones(5, 8).T @ (xq / s), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, torch.ones(5, 8) @ (trits * gamma), rtol=1e-5, atol=1e-6)
