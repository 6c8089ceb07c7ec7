"""The benchmarks' figures as pictures, drawn from their result files, for the documentation.

    python benchmarks/plot.py       # after make bench; needs matplotlib (the bench dependency group)

Writes docs/img/throughput.svg (from benchmarks/results/bench.json: requests per second of each contender,
with the range over the rounds) and docs/img/rate_limited.svg (from benchmarks/results/rate_limited.json:
the share of the allowed rate each contender achieved per scenario, and the share of its requests that
were answered 429). Each SVG names its result file and that file's SHA-256, so the test suite can tell a
picture that is older than its figures (tests/test_docs.py). The output is deterministic: the same result
file gives the same SVG, byte for byte.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("svg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
IMAGES = ROOT / "docs" / "img"
BASELINES = {"raw_aiohttp", "ideal"}  # drawn grey: what the SDK is measured against
SDK_COLOR, SDK_ALONE_COLOR, BASELINE_COLOR, OTHER_COLOR = "#3f51b5", "#9fa8da", "#9e9e9e", "#ff9800"

plt.rcParams.update(
    {
        "svg.hashsalt": "moneykit_async",  # stable element ids
        "svg.fonttype": "none",  # text stays text: smaller, searchable
        "font.size": 10,
        "axes.spines.top": False,
        "axes.spines.right": False,
    }
)


def source_stamp(path: Path) -> str:
    """What an SVG records about its source: the result file and its SHA-256."""
    return f"{path.relative_to(ROOT)} sha256={hashlib.sha256(path.read_bytes()).hexdigest()}"


def color(contender: str) -> str:
    if contender in BASELINES:
        return BASELINE_COLOR
    if contender == "sdk-alone":  # the fleet scenario's control: processes that do not share the rate
        return SDK_ALONE_COLOR
    return SDK_COLOR if contender.startswith(("sdk", "cli")) else OTHER_COLOR


def save(figure: Any, name: str, source: Path) -> Path:
    IMAGES.mkdir(parents=True, exist_ok=True)
    out = IMAGES / name
    figure.savefig(out, format="svg", bbox_inches="tight", metadata={"Date": None, "Source": source_stamp(source)})
    plt.close(figure)
    return out


def throughput(source: Path) -> Path:
    results = json.loads(source.read_text())["results"]
    names = [r["contender"] for r in results]
    rates = [r["requests_per_s"] for r in results]
    low = [r["requests_per_s"] - r.get("requests_per_s_range", [r["requests_per_s"]] * 2)[0] for r in results]
    high = [r.get("requests_per_s_range", [r["requests_per_s"]] * 2)[1] - r["requests_per_s"] for r in results]
    figure, axes = plt.subplots(figsize=(7, 0.45 * len(names) + 1))
    rows = range(len(names))[::-1]  # the first contender (the baseline) on top
    axes.barh(rows, rates, xerr=[low, high], color=[color(n) for n in names], capsize=3)
    axes.set_yticks(list(rows), names)
    axes.set_xlabel("requests per second (median of the rounds; bars: range)")
    axes.set_title("Throughput against an unlimited server", loc="left")
    return save(figure, "throughput.svg", source)


def rate_limited(source: Path) -> Path:
    results = json.loads(source.read_text())["results"]
    scenarios = list(dict.fromkeys(r["scenario"] for r in results))
    width = 0.8 / max(sum(r["scenario"] == s for r in results) for s in scenarios)
    figure, (shares, refusals) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    labelled: set[str] = set()
    for x, scenario in enumerate(scenarios):
        ran = [r for r in results if r["scenario"] == scenario]
        for i, r in enumerate(ran):  # the contenders of a scenario side by side, centred on its tick
            at = x + (i - (len(ran) - 1) / 2) * width
            label = None if r["contender"] in labelled else r["contender"]
            labelled.add(r["contender"])
            shares.bar(at, r["share"], width, color=color(r["contender"]), label=label)
            if r["share_429"] > 0:  # a log scale has no zero: the ideal client's bars are left out
                refusals.bar(at, 100 * r["share_429"], width, color=color(r["contender"]))
    shares.set_ylabel("share of the allowed rate")
    shares.set_ylim(0, 1.05)
    shares.legend(ncols=len(labelled), loc="lower center", bbox_to_anchor=(0.5, 1.0), fontsize=8, frameon=False)
    refusals.set_ylabel("requests answered 429 (%)")
    refusals.set_yscale("log")
    refusals.set_yticks([0.1, 1, 10, 100], ["0.1", "1", "10", "100"])
    refusals.set_xticks(range(len(scenarios)), scenarios, rotation=20, ha="right")
    figure.suptitle("Batches against a rate-limited server", x=0.06, ha="left", y=1.02)
    return save(figure, "rate_limited.svg", source)


def main() -> None:
    for draw, name in ((throughput, "bench.json"), (rate_limited, "rate_limited.json")):
        print(f"wrote {draw(RESULTS / name).relative_to(ROOT)}")


if __name__ == "__main__":
    main()
