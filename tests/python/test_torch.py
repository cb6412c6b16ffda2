"""Model.to_torch() against Model.encode / decode (fp32 rounding apart)."""
import numpy as np
import pytest

import sae

torch = pytest.importorskip("torch")

ARCHS = {
    "classic-unit_range": dict(d_sae=8, optimizer="adam", epochs=2, batch_size=64, threads=1),
    "classic-ufldl-tied-relu": dict(d_sae=8, optimizer="adam", epochs=2, batch_size=64, threads=1, normalize="ufldl",
                                    tied=True, sparsity="l1", encoder_activation="relu", decoder_activation="linear"),
    "standard": dict(architecture="standard", d_sae=16, optimizer="adam", epochs=2, batch_size=64, threads=1),
    "topk": dict(architecture="topk", k=4, d_sae=16, optimizer="adam", epochs=2, batch_size=64, threads=1),
    "batchtopk": dict(architecture="batchtopk", k=4, d_sae=16, optimizer="adam", epochs=2, batch_size=64, threads=1),
    "gated": dict(architecture="gated", d_sae=16, optimizer="adam", epochs=2, batch_size=64, threads=1,
                  l1_coefficient=0.01),
    "matryoshka_batchtopk": dict(architecture="matryoshka_batchtopk", k=4, d_sae=16, optimizer="adam", epochs=2,
                                 batch_size=64, threads=1),
    "jumprelu-no-b_dec-on-input": dict(architecture="jumprelu", d_sae=16, optimizer="adam", epochs=2, batch_size=64,
                                       threads=1, apply_b_dec_to_input=False, normalize="unit_range"),
}


@pytest.mark.parametrize("name", ARCHS)
def test_to_torch_computes_what_encode_does(x, name):
    m = sae.train(x, progress=False, **ARCHS[name])
    t = m.to_torch()
    assert isinstance(t, torch.nn.Module)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        h = t.encode(xt)
        want = torch.from_numpy(m.encode(x))
        # a latent sitting at its threshold may fall either way under fp32 rounding
        close = torch.isclose(h, want, rtol=1e-4, atol=1e-5)
        assert close.float().mean() > 0.999, name
        np.testing.assert_allclose(t.decode(want).numpy(), m.decode(want.numpy()), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(t(xt).numpy(), m.decode(h.numpy()), rtol=1e-4, atol=1e-4)


def test_to_torch_is_a_module_with_parameters(x):
    m = sae.train(x, progress=False, **ARCHS["topk"])
    t = m.to_torch()
    names = {n for n, _ in t.named_parameters()}
    assert names == {"W_enc", "b_enc", "W_dec", "b_dec"}
    loss = (t(torch.from_numpy(x)) - torch.from_numpy(x)).pow(2).mean()
    loss.backward()
    assert t.W_dec.grad is not None
