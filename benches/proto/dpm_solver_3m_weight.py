#!/usr/bin/env python3
"""DPM-Solver++(3M): which weight of the quadratic term converges at third order?

Pure Python, no dependencies: `python3 benches/proto/dpm_solver_3m_weight.py`.
Data x_0 ~ N(0.5, 0.3^2), T = 1000 linear betas, the exact x_0 predictor, the exact ODE state
as reference, steps on t in [200, 999] (away from the integer-grid effects near t = 0).
Prints the max error over x_T in {-2.5, ..., 2.5} for 6..81 steps with the Taylor-consistent
weight D2 = 2 (D1_0 - D1_1) / (r0 + r1) (ddpm-core) and with half of it.
"""
import math

T = 1000
betas = [1e-4 + (0.02 - 1e-4) * i / (T - 1) for i in range(T)]
abar, p = [], 1.0
for b in betas:
    p *= 1 - b
    abar.append(p)
MU, S = 0.5, 0.3


def x0hat(x, ab):
    a = math.sqrt(ab)
    return MU + a * S * S * (x - a * MU) / (a * a * S * S + 1 - ab)


def lam(ab):
    return 0.5 * math.log(ab / (1 - ab))


def weights(h):
    e = -math.expm1(-h)
    return e, 1 - e / h, 0.5 - 1 / h + e / (h * h)


def solve(n, d2_scale, z, lo=200):
    ts = sorted({round(lo + i * (T - 1 - lo) / (n - 1)) for i in range(n)}, reverse=True)

    def state(t):
        ab = abar[t]
        return math.sqrt(ab) * MU + math.sqrt(ab * S * S + 1 - ab) * z

    x, exact, hist = state(ts[0]), state(ts[-1]), []
    for i, t in enumerate(ts[:-1]):
        ab, abn = abar[t], abar[ts[i + 1]]
        m, l = x0hat(x, ab), lam(ab)
        hist.append((l, m))
        h = lam(abn) - l
        c0, c1, c2 = weights(h)
        d1 = d2 = 0.0
        if len(hist) >= 2:
            l1, m1 = hist[-2]
            r0 = (l - l1) / h
            d1_0 = (m - m1) / r0
            d1 = d1_0
            if len(hist) >= 3:
                l2, m2 = hist[-3]
                r1 = (l1 - l2) / h
                d1_1 = (m1 - m2) / r1
                d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
                d2 = d2_scale * 2 * (d1_0 - d1_1) / (r0 + r1)
        x = math.sqrt(1 - abn) / math.sqrt(1 - ab) * x + math.sqrt(abn) * (c0 * m + c1 * d1 + c2 * d2)
    return abs(x - exact)


for name, scale in (("Taylor weight (ddpm-core)", 1.0), ("half weight", 0.5)):
    ns = (6, 11, 21, 41, 81)
    errs = [max(solve(n, scale, z) for z in (-2.5, -1.0, 0.0, 0.7, 2.5)) for n in ns]
    ratios = [errs[i] / errs[i + 1] for i in range(len(ns) - 1)]
    print(f"{name:28s}", " ".join(f"{e:.2e}" for e in errs), "| ratios", " ".join(f"{r:.1f}" for r in ratios))
