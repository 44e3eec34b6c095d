#!/usr/bin/python3
"""tools/torch_char_rnn.py - the PyTorch reference for `kiln train char-lstm|char-gru`.

    /usr/bin/python3 tools/torch_char_rnn.py [--cell lstm|gru] [--data FILE]
        [--layers N] [--hidden N] [--seq N] [--batch N] [--iters N] [--lr X]
        [--clip X] [--dropout P] [--eval-every N] [--seed N] [--threads N]

The same model and protocol as tools/kiln/cmd_char.c, so the final lines compare:

  * data: the bytes of the file; the vocabulary is the sorted set of distinct
    bytes; the first 90% (n * 9 // 10) train, the rest validate (kiln/text.h);
  * batches: the split cut into `batch` streams of L = (len - 1) // batch
    tokens; batch k reads the window at b*L + k*seq of each stream, k modulo
    L // seq; the hidden state is carried from batch to batch (truncated
    BPTT) and reset at k == 0;
  * model: embedding [V, H] (N(0, 1)), nn.LSTM / nn.GRU (batch-first, PyTorch's
    initialisation, dropout between layers), a linear decoder [V, H];
  * Adam (lr, betas (0.9, 0.999), eps 1e-8), clip_grad_norm_(clip);
  * validation: every validation stream batch from a zero state, carrying
    the state, the mean of the batch losses (nats per character).

The last line is as kiln's:
  val_loss=... tokens_per_s=... iters=... backend=torch device="cpu"
"""
import argparse
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class CharRNN(nn.Module):
    def __init__(self, cell, V, H, L, dropout):
        super().__init__()
        self.embed = nn.Embedding(V, H)
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn(H, H, L, batch_first=True, dropout=dropout if L > 1 else 0.0)
        self.decoder = nn.Linear(H, V)

    def forward(self, x, state):
        h, state = self.rnn(self.embed(x), state)
        return self.decoder(h), state


def stream_batch(tokens, B, T, k):
    L = (len(tokens) - 1) // B
    nb = L // T
    k %= nb
    starts = torch.arange(B) * L + k * T
    idx = starts[:, None] + torch.arange(T)[None, :]
    return tokens[idx], tokens[idx + 1], nb


def detach(state):
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return None if state is None else state.detach()


def validate(model, val, B, T):
    model.eval()
    _, _, nb = stream_batch(val, B, T, 0)
    state, total = None, 0.0
    with torch.no_grad():
        for k in range(nb):
            x, y, _ = stream_batch(val, B, T, k)
            logits, state = model(x, state)
            total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1)).item()
    model.train()
    return total / nb


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cell", choices=["lstm", "gru"], default="lstm")
    ap.add_argument("--data", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                   "..", "..", "shared", "data", "tinyshakespeare.txt"))
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--seq", type=int, default=50)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--clip", type=float, default=5.0)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    raw = open(a.data, "rb").read()
    if len(raw) < 20:
        sys.exit("torch_char_rnn: %s: too short" % a.data)
    vocab = sorted(set(raw))
    index = {b: i for i, b in enumerate(vocab)}
    tokens = torch.tensor([index[b] for b in raw], dtype=torch.long)
    n_train = len(tokens) * 9 // 10
    train, val = tokens[:n_train], tokens[n_train:]
    model = CharRNN(a.cell, len(vocab), a.hidden, a.layers, a.dropout)
    nn.init.normal_(model.embed.weight, 0.0, 1.0)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    print("torch_char_rnn: char-%s, %d layers of %d, vocabulary %d, %d train / %d validation"
          % (a.cell, a.layers, a.hidden, len(vocab), len(train), len(val)), flush=True)
    state, train_s, vloss = None, 0.0, float("nan")
    for it in range(a.iters):
        t0 = time.perf_counter()
        x, y, nb = stream_batch(train, a.batch, a.seq, it)
        if it % nb == 0:
            state = None
        logits, state = model(x, detach(state))
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if a.clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        train_s += time.perf_counter() - t0
        done = it + 1
        if done % 50 == 0:
            print("iter %d/%d  train loss %.4f  %.0f tokens/s"
                  % (done, a.iters, loss.item(), done * a.batch * a.seq / train_s), flush=True)
        if (a.eval_every and done % a.eval_every == 0) or done == a.iters:
            vloss = validate(model, val, a.batch, a.seq)
            print("iter %d  val loss %.4f nats/char" % (done, vloss), flush=True)
    tps = a.iters * a.batch * a.seq / train_s if train_s > 0 else 0.0
    print('val_loss=%.4f tokens_per_s=%.1f iters=%d backend=torch device="cpu"' % (vloss, tps, a.iters))


if __name__ == "__main__":
    main()
