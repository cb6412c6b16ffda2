"""Model.to_torch(): a trained SAE as a torch.nn.Module, computing what docs/formats.md states
("Before the encoder" and "What the tensors compute"). Within fp32 rounding of the C++ path."""
import torch

_ACTIVATIONS = {"sigmoid": torch.sigmoid, "relu": torch.relu, "tanh": torch.tanh, "linear": lambda v: v}


class SparseAutoencoder(torch.nn.Module):
    """encode(x) → h [N, d_sae]; decode(h) → x̂ [N, d_in]; forward(x) = decode(encode(x)).
    x is raw input: encode applies the normalisation saved with the model (cfg["normalize"],
    cfg["normalize_stats"]), as `sae encode` does; x̂ is in the normalised space."""

    def __init__(self, cfg, tensors):
        super().__init__()
        self.architecture = cfg["architecture"]
        if self.architecture not in ("classic", "standard", "topk", "batchtopk", "jumprelu", "gated",
                                     "matryoshka_batchtopk"):
            raise ValueError(f"to_torch: architecture {self.architecture!r} is not described in docs/formats.md yet")
        self.normalize = cfg["normalize"]
        stats = cfg.get("normalize_stats")
        if self.normalize != "none" and not stats:
            raise ValueError("to_torch: the model was saved without its normalisation statistics; add them with "
                             "`sae upgrade --model DIR`")
        self.stats = dict(stats or {})
        self.k = int(cfg["k"])
        self.apply_b_dec_to_input = bool(cfg["apply_b_dec_to_input"])
        self.encoder_activation = _ACTIVATIONS[cfg["encoder_activation"]]
        self.decoder_activation = _ACTIVATIONS[cfg["decoder_activation"]]
        names = ("W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec") if self.architecture == "gated" else (
            "W_enc", "b_enc", "W_dec", "b_dec")
        for name in names:
            self.register_parameter(name, torch.nn.Parameter(torch.from_numpy(tensors[name].copy())))
        if "threshold" in tensors:
            self.register_buffer("threshold", torch.from_numpy(tensors["threshold"].copy()))

    def normalize_input(self, x):
        if self.normalize == "none":
            return x.float()
        x = x.double()
        if self.normalize == "unit_range":
            lo, hi = self.stats["min"], self.stats["max"]
            return ((x - lo) / (hi - lo)).float() if hi > lo else torch.zeros_like(x, dtype=torch.float32)
        c = self.stats["clip"]  # ufldl
        y = (x - x.mean(-1, keepdim=True)).float().double()
        if c == 0:
            return torch.full_like(y, 0.5, dtype=torch.float32)
        return ((y.clamp(-c, c) / c + 1) * 0.4 + 0.1).float()

    def encode(self, x):
        x = self.normalize_input(x)
        if self.architecture == "classic":
            return self.encoder_activation(x @ self.W_enc + self.b_enc)
        xc = (x - self.b_dec) if self.apply_b_dec_to_input else x
        if self.architecture == "gated":  # h = 1[gate > 0] · relu(magnitude), W_enc shared
            gate = xc @ self.W_enc + self.b_gate
            mag = xc @ (self.W_enc * torch.exp(self.r_mag)) + self.b_mag
            return (gate > 0) * torch.relu(mag)
        pre = xc @ self.W_enc + self.b_enc
        if self.architecture == "standard":
            return torch.relu(pre)
        if self.architecture == "topk":
            v, i = pre.topk(min(self.k, pre.shape[-1]), dim=-1)
            return torch.zeros_like(pre).scatter(-1, i, v.relu())
        return pre * (pre > self.threshold)  # batchtopk, jumprelu, matryoshka_batchtopk

    def decode(self, h):
        out = h @ self.W_dec + self.b_dec
        return self.decoder_activation(out) if self.architecture == "classic" else out

    def forward(self, x):
        return self.decode(self.encode(x))


def module_from(cfg, tensors):
    return SparseAutoencoder(cfg, tensors)
