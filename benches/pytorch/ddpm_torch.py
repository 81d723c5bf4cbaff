"""The DDPM U-Net and one training / sampling step in plain PyTorch, for a side-by-side
speed comparison with ddpm (Rust/burn). Written independently from the Rust code, following
the paper's Appendix B and the original TensorFlow implementation.

Two models: `--model mnist` is `UNetConfig::ddpm_mnist()` (ch 32, ch_mult (1, 2, 2), one
residual block per level, attention at 7x7 and in the middle, GroupNorm(8), 1x28x28 images);
`--model cifar10` is the paper's CIFAR-10 model, `UNetConfig::ddpm_cifar10()` (ch 128, ch_mult
(1, 2, 2, 2), two residual blocks per level, attention at 16x16, GroupNorm(32), 3x32x32,
35.7M parameters). Dropout 0.1; T = 1000, linear betas 1e-4..0.02; Adam.

Prints one JSON line: median ms per training step and per sampling step (at --batch and at
batch 1), the parameter count (equal to ours: benches/pytorch/run.sh asserts it), peak
memory (RSS on the CPU, allocated on CUDA).
Usage: python3 ddpm_torch.py [--model mnist|cifar10] [--batch 64] [--iters 5] [--warmup 3] [--threads N]
       [--device cpu|cuda] [--compile]
"""
import argparse
import json
import math
import resource
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def timestep_embedding(t, dim):
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / (half - 1))
    args = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class ResnetBlock(nn.Module):
    def __init__(self, cin, cout, temb, groups, dropout):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=1e-6)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps=1e-6)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    def __init__(self, c, groups):
        super().__init__()
        self.norm = nn.GroupNorm(groups, c, eps=1e-6)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.out = nn.Conv2d(c, c, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        a = F.scaled_dot_product_attention(q.transpose(1, 2)[:, None], k.transpose(1, 2)[:, None],
                                           v.transpose(1, 2)[:, None])[:, 0]
        return x + self.out(a.transpose(1, 2).reshape(b, c, h, w))


class UNet(nn.Module):
    def __init__(self, ch=32, ch_mult=(1, 2, 2), num_res=1, attn_res=(7,), res=28, groups=8, dropout=0.1,
                 in_ch=1):
        super().__init__()
        temb = 4 * ch
        self.ch = ch
        self.temb = nn.Sequential(nn.Linear(ch, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.conv_in = nn.Conv2d(in_ch, ch, 3, padding=1)
        self.down = nn.ModuleList()
        skips, c, r = [ch], ch, res
        for i, m in enumerate(ch_mult):
            for _ in range(num_res):
                self.down.append(ResnetBlock(c, ch * m, temb, groups, dropout))
                c = ch * m
                if r in attn_res:
                    self.down.append(AttnBlock(c, groups))
                skips.append(c)
            if i != len(ch_mult) - 1:
                self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
                r //= 2
        self.mid = nn.ModuleList([ResnetBlock(c, c, temb, groups, dropout), AttnBlock(c, groups),
                                  ResnetBlock(c, c, temb, groups, dropout)])
        self.up = nn.ModuleList()
        for i, m in reversed(list(enumerate(ch_mult))):
            for _ in range(num_res + 1):
                self.up.append(ResnetBlock(c + skips.pop(), ch * m, temb, groups, dropout))
                c = ch * m
                if r in attn_res:
                    self.up.append(AttnBlock(c, groups))
            if i != 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
                self.up.append(nn.Conv2d(c, c, 3, padding=1))
                r *= 2
        self.norm_out = nn.GroupNorm(groups, c, eps=1e-6)
        self.conv_out = nn.Conv2d(c, in_ch, 3, padding=1)

    def forward(self, x, t):
        temb = self.temb(timestep_embedding(t, self.ch))
        hs = [self.conv_in(x)]
        h = hs[-1]
        for layer in self.down:
            if isinstance(layer, ResnetBlock):
                h = layer(h, temb)
                hs.append(h)
            elif isinstance(layer, AttnBlock):
                h = layer(h)
                hs[-1] = h
            else:
                h = layer(h)
                hs.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, temb)), temb)
        for layer in self.up:
            if isinstance(layer, ResnetBlock):
                h = layer(torch.cat([h, hs.pop()], dim=1), temb)
            else:
                h = layer(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--iters", type=int, default=5)
    # Untimed steps before the timed ones, as `examples/speed --warmup` (the same default).
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--model", choices=["mnist", "cifar10"], default="mnist")
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", action="store_true")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    T = 1000
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0).to(dev)
    if a.model == "mnist":
        model, shape = UNet(), (1, 28, 28)
    else:
        model = UNet(ch=128, ch_mult=(1, 2, 2, 2), num_res=2, attn_res=(16,), res=32, groups=32, in_ch=3)
        shape = (3, 32, 32)
    model = model.to(dev)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=2e-4, eps=1e-8)
    net = torch.compile(model) if a.compile else model
    x0 = torch.randn(a.batch, *shape, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def train_step():
        t = torch.randint(0, T, (a.batch,), device=dev)
        eps = torch.randn_like(x0)
        ab = abar[t].float()[:, None, None, None]
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        loss = F.mse_loss(net(xt, t), eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()

    @torch.no_grad()
    def sample_step(x, t=500):
        tt = torch.full((x.shape[0],), t, device=dev)
        eps = net(x, tt)
        ab, ab_prev, beta = abar[t].item(), abar[t - 1].item(), betas[t].item()
        x0_hat = ((x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)).clamp(-1, 1)
        mean = (beta * math.sqrt(ab_prev) / (1 - ab)) * x0_hat + ((1 - ab_prev) * math.sqrt(1 - beta) / (1 - ab)) * x
        return mean + math.sqrt(beta) * torch.randn_like(x)

    def timed(fn, n):
        out = []
        for i in range(a.warmup + n):
            s = time.perf_counter()
            fn()
            sync()
            if i >= a.warmup:
                out.append((time.perf_counter() - s) * 1e3)
        return sorted(out)[len(out) // 2]

    model.eval()
    x = torch.randn(a.batch, *shape, device=dev)
    sample_ms = timed(lambda: sample_step(x), a.iters)
    x1 = torch.randn(1, *shape, device=dev)
    sample1_ms = timed(lambda: sample_step(x1), a.iters)
    model.train()
    train_ms = timed(train_step, a.iters)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    name = f"pytorch-{torch.__version__}" + ("-compile" if a.compile else "") + f"-{dev.type}"
    print(json.dumps({"impl": name, "model": a.model, "threads": torch.get_num_threads(), "batch": a.batch,
                      "train_ms": round(train_ms, 1), "sample_ms": round(sample_ms, 1),
                      "sample1_ms": round(sample1_ms, 1), "params": params, "peak_rss_mib": round(peak)}))


if __name__ == "__main__":
    main()
