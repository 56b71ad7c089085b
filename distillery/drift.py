"""Text-length drift: is the new data shaped like the data the current champion was trained on?

A registered version carries a small profile of its validated data's text lengths
(`length_profile`): the deciles of the characters per text and the share of rows
between them. New data is binned at the champion's deciles and compared with the
population stability index (PSI), the usual drift score for a binned distribution:

    PSI = sum_i (a_i - r_i) * ln(a_i / r_i)

with r_i the champion's share of rows in bin i and a_i the new data's. The common
reading: below 0.1 no real change, 0.1-0.25 a moderate shift, above 0.25 a large one.
PSI is a symmetrised KL divergence: it grows with sampling noise on very small data
(about (bins - 1) * (1/n + 1/m) with no shift at all), so the thresholds are params.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

PROFILE_VERSION = 1
_FLOOR = 1e-4  # an empty bin counts as this share: ln(0) is undefined, and one empty bin is not infinite drift


def _lengths(texts: Iterable[str]) -> np.ndarray:
    return np.fromiter((len(t) for t in texts), dtype=np.int64)


def length_profile(texts: Iterable[str], bins: int = 10) -> dict:
    """The deciles (as bin edges) of characters per text and the share of rows in each bin."""
    return lengths_profile(_lengths(texts), bins)


def lengths_profile(n_chars: np.ndarray, bins: int = 10) -> dict:
    """`length_profile` from the characters per text (what the validate stage keeps: 8 bytes a row)."""
    n_chars = np.asarray(n_chars, dtype=np.int64)
    if len(n_chars) == 0:
        raise ValueError("cannot profile an empty split")
    # Ties (many texts of one length) merge edges: fewer, wider bins rather than empty ones.
    edges = np.unique(np.quantile(n_chars, np.linspace(0, 1, bins + 1)[1:-1], method="higher"))
    return {"version": PROFILE_VERSION, "rows": int(len(n_chars)), "edges": [round(float(e), 2) for e in edges],
            "shares": [round(float(x), 6) for x in _shares(n_chars, edges)],
            "mean_chars": round(float(n_chars.mean()), 2), "p50_chars": float(np.median(n_chars)),
            "p95_chars": float(np.quantile(n_chars, 0.95))}


def _shares(n_chars: np.ndarray, edges) -> np.ndarray:
    # bin 0: below edges[0]; bin i: [edges[i-1], edges[i]); last: from edges[-1] up
    idx = np.searchsorted(np.asarray(edges, dtype=float), n_chars, side="right")
    return np.bincount(idx, minlength=len(edges) + 1) / len(n_chars)


def population_stability_index(reference: dict, texts: Iterable[str]) -> float:
    """PSI of `texts`' lengths against a `length_profile`, binned at the profile's edges."""
    actual = np.maximum(_shares(_lengths(texts), reference["edges"]), _FLOOR)
    expected = np.maximum(np.asarray(reference["shares"], dtype=float), _FLOOR)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def check_length_shift(texts: dict[str, list[str]], champion: dict | None, champion_version: str | None,
                       warn_psi: float | None, fail_psi: float | None) -> dict:
    """Compare each split with the champion's profile of the same split.

    Returns {"status": skipped | passed | warning | failed, "reason": one readable line,
    "splits": {split: {psi, rows, mean_chars, champion_rows, champion_mean_chars, status}}}.
    """
    if warn_psi is None and fail_psi is None:
        return {"status": "skipped", "reason": "switched off (validate.length_shift has no thresholds)", "splits": {}}
    if champion_version is None:
        return {"status": "skipped", "reason": "no champion yet: nothing to compare with", "splits": {}}
    if not champion:
        return {"status": "skipped", "splits": {},
                "reason": f"champion version {champion_version} has no length profile of its data "
                          "(registered before profiles were recorded)"}
    splits, worst = {}, "passed"
    for name, split_texts in texts.items():
        ref = champion.get(name)
        if not ref or ref.get("version") != PROFILE_VERSION:
            continue
        psi = population_stability_index(ref, split_texts)
        status = ("failed" if fail_psi is not None and psi > fail_psi else
                  "warning" if warn_psi is not None and psi > warn_psi else "passed")
        splits[name] = {"psi": round(psi, 4), "status": status, "rows": len(split_texts),
                        "mean_chars": round(float(_lengths(split_texts).mean()), 1) if split_texts else 0.0,
                        "champion_rows": ref["rows"], "champion_mean_chars": ref["mean_chars"]}
        worst = max(worst, status, key=("passed", "warning", "failed").index)
    if not splits:
        return {"status": "skipped", "splits": {},
                "reason": f"champion version {champion_version}'s profile has none of the splits {list(texts)}"}
    parts = [f"{name}: PSI {s['psi']:.3f} (mean {s['champion_mean_chars']:.0f} -> {s['mean_chars']:.0f} "
             f"characters per text, {s['status']})" for name, s in splits.items()]
    limits = f"warn above {warn_psi}, fail above {fail_psi}"
    return {"status": worst, "splits": splits,
            "reason": f"against champion version {champion_version}: {'; '.join(parts)} ({limits})"}
