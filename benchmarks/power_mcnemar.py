"""Power of the exact McNemar test for a difference in jailbreak rate between two methods on the same
prompts, by exact enumeration of the discordant-pair distribution (no simulation noise).

Two models of the pairing bracket the truth: ``nested`` (every prompt the weaker method jailbreaks, the
stronger one jailbreaks too: the fewest discordant pairs, the most power) and ``independent`` (the two
outcomes independent given the rates: many discordant pairs both ways).

Usage: python benchmarks/power_mcnemar.py [--alpha 0.05] > docs/power.md table rows
"""

from __future__ import annotations

import argparse

from scipy.stats import binom, binomtest


def mcnemar_power(n: int, p_first_only: float, p_second_only: float, alpha: float = 0.05) -> float:
    """P(exact two-sided McNemar p < alpha) with ``n`` pairs and the given discordance probabilities."""
    p_discordant = p_first_only + p_second_only
    if p_discordant == 0:
        return 0.0
    share = p_first_only / p_discordant
    power = 0.0
    for d in range(n + 1):
        weight = binom.pmf(d, n, p_discordant)
        if weight < 1e-12 or d == 0:
            continue
        rejecting = sum(binom.pmf(b, d, share) for b in range(d + 1) if binomtest(b, d, 0.5).pvalue < alpha)
        power += weight * rejecting
    return power


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alpha", type=float, default=0.05)
    args = parser.parse_args()
    print("| n | rates (ours vs other) | power, nested | power, independent |")
    print("|---|---|---|---|")
    for n in (32, 64, 94, 159, 253):
        for ours, other in ((0.97, 0.91), (0.95, 0.80), (0.90, 0.70), (0.70, 0.40)):
            nested = mcnemar_power(n, ours - other, 0.0, args.alpha)
            independent = mcnemar_power(n, ours * (1 - other), other * (1 - ours), args.alpha)
            print(f"| {n} | {ours:.2f} vs {other:.2f} | {nested:.2f} | {independent:.2f} |")


if __name__ == "__main__":
    main()
