#!/usr/bin/python3
"""tools/torch_char_gpt.py - the PyTorch reference for `kiln train char-gpt`.

    /usr/bin/python3 tools/torch_char_gpt.py [--data FILE] [--layers N] [--heads N]
        [--embd N] [--block N] [--batch N] [--iters N] [--lr X] [--min-lr X]
        [--warmup N] [--lr-decay-iters N] [--weight-decay X] [--clip X]
        [--dropout P] [--eval-every N] [--seed N] [--threads N] [--preset cpu|gpu]

nanoGPT's model (model.py, bias=True), written out here so it runs on the
PyTorch 1.13 of Debian 12, with kiln's defaults, data split and validation
protocol, so that the two final lines compare:

  * data: the bytes of the file; the vocabulary is the sorted set of distinct
    bytes; the first 90% (n * 9 // 10) train, the rest validate (kiln/text.h);
  * training batches: random windows of the training split (nanoGPT's
    get_batch; kiln draws its own, so the batches differ, the distribution not);
  * validation: kiln's (and char-lstm's) protocol: the split cut into `batch`
    streams of L = (len - 1) // batch tokens, read in consecutive windows of
    `block`, (L // block) batches, the mean of the batch losses;
  * AdamW betas (0.9, 0.99), eps 1e-8, weight decay on parameters of 2 or more
    dimensions (nanoGPT's configure_optimizers), gradient clipping by global
    norm, nanoGPT's get_lr (linear warmup, cosine decay to min_lr);
  * initialisation N(0, 0.02), c_proj weights N(0, 0.02 / sqrt(2 L)), zero
    biases; lm_head tied to wte;
  * dropout on the embeddings and after each residual projection. Not on the
    attention weights: kiln's fused attention op has no dropout, so this
    reference leaves it out too (it matters only with --dropout > 0).

The last line is as kiln's:
  val_loss=... tokens_per_s=... iters=... backend=torch device="cpu"
"""
import argparse
import math
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, C, H, dropout):
        super().__init__()
        self.ln_1 = nn.LayerNorm(C)
        self.attn = nn.Module()
        self.attn.c_attn = nn.Linear(C, 3 * C)
        self.attn.c_proj = nn.Linear(C, C)
        self.ln_2 = nn.LayerNorm(C)
        self.mlp = nn.Module()
        self.mlp.c_fc = nn.Linear(C, 4 * C)
        self.mlp.c_proj = nn.Linear(4 * C, C)
        self.H = H
        self.drop = nn.Dropout(dropout)

    def attention(self, x):
        B, T, C = x.shape
        q, k, v = self.attn.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.H, C // self.H).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.drop(self.attn.c_proj(y))

    def forward(self, x):
        x = x + self.attention(self.ln_1(x))
        x = x + self.drop(self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x)))))
        return x


class GPT(nn.Module):
    def __init__(self, V, L, H, C, block, dropout):
        super().__init__()
        self.transformer = nn.Module()
        self.transformer.wte = nn.Embedding(V, C)
        self.transformer.wpe = nn.Embedding(block, C)
        self.transformer.drop = nn.Dropout(dropout)
        self.transformer.h = nn.ModuleList([Block(C, H, dropout) for _ in range(L)])
        self.transformer.ln_f = nn.LayerNorm(C)
        self.lm_head = nn.Linear(C, V, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied
        self.apply(self._init_weights)
        for n, p in self.named_parameters():
            if n.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * L))

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets):
        B, T = idx.shape
        pos = torch.arange(T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for b in self.transformer.h:
            x = b(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def get_lr(i, a):
    """nanoGPT's get_lr of the 0-based iteration i (kiln's KILN_OP_LR_SCHEDULE)."""
    if i < a.warmup:
        return a.lr * (i + 1) / (a.warmup + 1)
    if i > a.lr_decay_iters:
        return a.min_lr
    r = (i - a.warmup) / (a.lr_decay_iters - a.warmup) if a.lr_decay_iters > a.warmup else 0.0
    return a.min_lr + 0.5 * (1.0 + math.cos(math.pi * r)) * (a.lr - a.min_lr)


def validate(model, val, B, T):
    L = (len(val) - 1) // B
    nb = L // T
    starts = torch.arange(B) * L
    total = 0.0
    model.eval()
    with torch.no_grad():
        for k in range(nb):
            ix = starts + k * T
            x = torch.stack([val[i:i + T] for i in ix])
            y = torch.stack([val[i + 1:i + 1 + T] for i in ix])
            total += model(x, y).item()
    model.train()
    return total / nb


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--preset", choices=["cpu", "gpu"], default="cpu")
    for name, typ in (("layers", int), ("heads", int), ("embd", int), ("block", int), ("batch", int),
                      ("iters", int), ("lr", float), ("min-lr", float), ("warmup", int),
                      ("lr-decay-iters", int), ("weight-decay", float), ("clip", float),
                      ("dropout", float), ("eval-every", int), ("seed", int), ("threads", int)):
        ap.add_argument("--" + name, type=typ, default=None)
    a = ap.parse_args()
    defaults = dict(layers=4, heads=4, embd=128, block=64, batch=12, iters=2000, lr=1e-3, min_lr=1e-4,
                    warmup=100, lr_decay_iters=None, weight_decay=0.1, clip=1.0, dropout=0.0,
                    eval_every=250, seed=1, threads=None)
    if a.preset == "gpu":
        defaults.update(layers=6, heads=6, embd=384, block=256, batch=64, iters=5000, dropout=0.2)
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.lr_decay_iters is None:
        a.lr_decay_iters = a.iters
    if a.embd % a.heads:
        ap.error("--heads %d must divide --embd %d" % (a.heads, a.embd))
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)

    path = a.data
    if path is None:
        d = os.environ.get("KILN_DATA") or os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "..", "..", "shared", "data")
        path = os.path.join(d, "tinyshakespeare.txt")
    raw = open(path, "rb").read()
    vocab = sorted(set(raw))
    index = {b: i for i, b in enumerate(vocab)}
    data = torch.tensor([index[b] for b in raw], dtype=torch.long)
    n_train = len(data) * 9 // 10
    train, val = data[:n_train], data[n_train:]

    model = GPT(len(vocab), a.layers, a.heads, a.embd, a.block, a.dropout)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.99), eps=1e-8)
    n_params = sum(p.numel() for p in model.parameters())
    print("torch char-gpt: PyTorch %s, %d thread(s), %d parameters (%d layers, %d heads, embd %d, "
          "block %d, vocabulary %d)" % (torch.__version__, torch.get_num_threads(), n_params, a.layers,
                                        a.heads, a.embd, a.block, len(vocab)))
    print("  %s: %d characters, %d train / %d validation; batch %d x block %d" % (
        path, len(data), len(train), len(val), a.batch, a.block), flush=True)

    train_s, tokens, val_loss, run = 0.0, 0, float("nan"), []
    for it in range(a.iters):
        ix = torch.randint(len(train) - a.block, (a.batch,))
        x = torch.stack([train[i:i + a.block] for i in ix])
        y = torch.stack([train[i + 1:i + 1 + a.block] for i in ix])
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = get_lr(it, a)
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if a.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        train_s += time.perf_counter() - t0
        tokens += a.batch * a.block
        run.append(loss.item())
        done = it + 1
        if done % 10 == 0 or done == a.iters:
            print("iter %d/%d  train loss %.4f  %.0f tokens/s" % (done, a.iters, sum(run) / len(run),
                                                                 tokens / train_s), flush=True)
            run = []
        if (a.eval_every and done % a.eval_every == 0) or done == a.iters:
            val_loss = validate(model, val, a.batch, a.block)
            print("iter %d  val loss %.4f nats/char" % (done, val_loss), flush=True)
    if math.isnan(val_loss):
        val_loss = validate(model, val, a.batch, a.block)
    print("val_loss=%.4f tokens_per_s=%.1f iters=%d backend=torch device=\"cpu\"" % (
        val_loss, tokens / train_s if train_s > 0 else 0.0, a.iters))


if __name__ == "__main__":
    sys.exit(main())
