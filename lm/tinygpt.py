"""TinyGPT: the small byte-level causal language model that sae studies in its tests and demo.

A GPT-style decoder (pre-LayerNorm blocks, causal self-attention, GELU MLP, tied input and output
embeddings) over bytes (vocabulary 256). Its hook points are named as `model.named_modules()` names
them: `embed` (token + position embeddings), `blocks.0` … `blocks.3` (the residual stream after each
block), `blocks.i.attn`, `blocks.i.mlp`, `ln_f`. The forward pass takes token ids [B, T] (int64) and
returns logits [B, T, 256].

    model = tinygpt.load()                       # the shipped weights (lm/tinygpt.pt)
    ids = tinygpt.encode_text("def f(x):")       # [1, T] int64
    logits = model(ids)

Trained by lm/train.py (seeded; the corpus and its checksums are in lm/corpus.sha256).
"""
import math
import os

import torch
from torch import nn
from torch.nn import functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
WEIGHTS = os.path.join(HERE, "tinygpt.pt")
CONFIG = dict(vocab=256, context=128, layers=4, d_model=128, heads=4)


class _Bmm(torch.autograd.Function):
    """a @ b over the leading axes with contiguous operands, forward and backward: Debian's
    PyTorch 1.13 runs batched products of transposed views about 30 times slower."""

    @staticmethod
    def forward(ctx, a, b):                                 # a [..., n, k], b [..., k, m]
        ctx.save_for_backward(a, b)
        return torch.matmul(a.contiguous(), b.contiguous())

    @staticmethod
    def backward(ctx, g):                                   # g [..., n, m]
        a, b = ctx.saved_tensors
        g = g.contiguous()
        return (torch.matmul(g, b.transpose(-2, -1).contiguous()),
                torch.matmul(a.transpose(-2, -1).contiguous(), g))


def bmm(a, b):
    return _Bmm.apply(a, b)


class Attention(nn.Module):
    def __init__(self, d_model, heads, context):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.register_buffer("mask", torch.tril(torch.ones(context, context, dtype=torch.bool)), persistent=False)

    def forward(self, x):                                   # x [B, T, d]
        B, T, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)              # each [B, T, d]
        q, k, v = (t.view(B, T, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))  # [B, h, T, dh]
        att = bmm(q, k.transpose(-2, -1)) / math.sqrt(d // self.heads)                           # [B, h, T, T]
        att = att.masked_fill(~self.mask[:T, :T], float("-inf")).softmax(dim=-1)
        y = bmm(att, v).transpose(1, 2).reshape(B, T, d)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, d_model):
        super().__init__()
        self.up = nn.Linear(d_model, 4 * d_model)
        self.down = nn.Linear(4 * d_model, d_model)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    """x + attn(ln1(x)), then + mlp(ln2(·)): the output is the residual stream after the block."""

    def __init__(self, d_model, heads, context):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = Attention(d_model, heads, context)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class Embed(nn.Module):
    def __init__(self, vocab, context, d_model):
        super().__init__()
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(context, d_model)
        nn.init.normal_(self.tok.weight, std=0.02)   # tied to the output: N(0, 1) would give huge logits
        nn.init.normal_(self.pos.weight, std=0.02)

    def forward(self, ids):                                 # ids [B, T] → [B, T, d]
        return self.tok(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))


class TinyGPT(nn.Module):
    def __init__(self, vocab=256, context=128, layers=4, d_model=128, heads=4):
        super().__init__()
        self.context = context
        self.embed = Embed(vocab, context, d_model)
        self.blocks = nn.ModuleList(Block(d_model, heads, context) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d_model)

    @property
    def unembed(self):
        """W_U [d_model, vocab]: logits = ln_f(resid) @ W_U (tied to the token embedding)."""
        return self.embed.tok.weight.t()

    def forward(self, ids):                                 # ids [B, T] int64 → logits [B, T, vocab]
        if ids.shape[1] > self.context:
            raise ValueError(f"TinyGPT: sequences of {ids.shape[1]} tokens; the context is {self.context}")
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x) @ self.unembed


def load(path=WEIGHTS):
    """The trained model (eval mode, CPU)."""
    model = TinyGPT(**CONFIG)
    state = torch.load(path, map_location="cpu")
    model.load_state_dict(state)
    return model.eval()


def encode_text(text):
    """Bytes of the UTF-8 text as token ids [1, T] (int64)."""
    return torch.tensor([list(text.encode("utf-8"))], dtype=torch.int64)


def vocab():
    """Token id → its text: each byte as a latin-1 character (what the browser shows)."""
    return [bytes([i]).decode("latin-1") for i in range(256)]


def windows(data, context=128, batch=16, limit=None):
    """Batches [batch, context] of consecutive non-overlapping windows of the byte string data
    (the last partial window dropped), at most `limit` windows: what the tests and demo feed."""
    n = len(data) // context
    if limit is not None:
        n = min(n, limit)
    t = torch.tensor(list(data[: n * context]), dtype=torch.int64).view(n, context)
    return [t[i: i + batch] for i in range(0, n, batch)]
