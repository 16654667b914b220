"""How large the drift score gets from sampling noise alone: the reason for the 500-row minimum.

Reference: `reference_stats` of the digits held-out split (450 rows), as `gateway models
evaluate` stores it. Live: bootstrap draws of n rows from the training split (same
distribution, rows the reference never saw), scored by the gateway's own `score_rows` with the
minimum lowered so every n is scored. Prints mean, 95th percentile and maximum of the score
per n; the in-distribution score must stay under the 0.2 threshold at the minimum.

    .venv/bin/python -m bench.drift_noise [--draws 100] [--seed 0]
"""

from __future__ import annotations

import argparse

import numpy as np

from gateway.lifecycle.drift import reference_stats, score_rows
from models.examples import _split

SIZES = (200, 300, 500, 1000, 2000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--draws", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    split = _split()
    reference = reference_stats(split.X_test)
    rng = np.random.default_rng(args.seed)
    print(f"reference {len(split.X_test)} rows; live: {args.draws} bootstrap draws of the "
          f"{len(split.X_train)}-row training split per size")
    print("| live rows | max PSI, mean | 95th percentile | largest seen |")
    print("| ---: | ---: | ---: | ---: |")
    for n in SIZES:
        scores = []
        for _ in range(args.draws):
            rows = split.X_train[rng.integers(0, len(split.X_train), n)]
            result = score_rows(reference, rows, min_samples=1)
            assert result is not None
            scores.append(result.score)
        print(f"| {n:,} | {np.mean(scores):.3f} | {np.percentile(scores, 95):.3f} | "
              f"{max(scores):.3f} |")
    whole = score_rows(reference, split.X_train, min_samples=1)
    shifted = score_rows(reference, np.minimum(split.X_train + 4, 16), min_samples=1)
    assert whole is not None and shifted is not None
    print(f"whole training split: {whole.score:.3f}; every pixel +4 (clipped at 16): "
          f"{shifted.score:.2f}")


if __name__ == "__main__":
    main()
