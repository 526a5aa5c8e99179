"""The side-by-side report: per load, medians over rounds and ratios to nginx; lbproxy's worker
scaling; Markdown, JSON and a chart."""

from __future__ import annotations

import datetime as dt
import json
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from benchkit import Measurement

BASELINE = "nginx"


@dataclass(frozen=True, slots=True)
class Summary:
    """A target's medians over rounds; the error counts are totals over rounds."""

    target: str
    req_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float | None
    cpu_percent: float | None
    non_2xx_3xx: int
    socket_errors: int


@dataclass(frozen=True, slots=True)
class Ratios:
    """A target's medians divided by nginx's: above 1 is better for req/s, worse for the rest."""

    req_per_s: float | None
    p50_ms: float | None
    p99_ms: float | None
    cpu_us_per_request: float | None


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarise(target: str, runs: Sequence[Measurement]) -> Summary:
    return Summary(
        target=target,
        req_per_s=statistics.median(m.wrk.req_per_s for m in runs),
        p50_ms=statistics.median(m.wrk.p50_ms for m in runs),
        p99_ms=statistics.median(m.wrk.p99_ms for m in runs),
        cpu_us_per_request=_median([m.cpu_us_per_request for m in runs]),
        cpu_percent=_median([m.cpu_percent for m in runs]),
        non_2xx_3xx=sum(m.wrk.non_2xx_3xx for m in runs),
        socket_errors=sum(m.wrk.socket_errors for m in runs),
    )


def _ratio(value: float | None, base: float | None) -> float | None:
    return None if value is None or not base else value / base


def ratios_to(summary: Summary, base: Summary | None) -> Ratios:
    if base is None:
        return Ratios(None, None, None, None)
    return Ratios(
        req_per_s=_ratio(summary.req_per_s, base.req_per_s),
        p50_ms=_ratio(summary.p50_ms, base.p50_ms),
        p99_ms=_ratio(summary.p99_ms, base.p99_ms),
        cpu_us_per_request=_ratio(summary.cpu_us_per_request, base.cpu_us_per_request),
    )


def number(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _times(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def summary_table(summaries: Sequence[Summary], ratios: Mapping[str, Ratios]) -> str:
    head = (
        "| target | req/s | vs nginx | p50 ms | vs nginx | p99 ms | vs nginx "
        "| CPU us/req | vs nginx | proxy CPU % | non-2xx/3xx | socket errors |\n"
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n"
    )
    rows = []
    for s in summaries:
        r = ratios[s.target]
        cells = (
            s.target,
            number(s.req_per_s, 0),
            _times(r.req_per_s),
            number(s.p50_ms, 3),
            _times(r.p50_ms),
            number(s.p99_ms, 3),
            _times(r.p99_ms),
            number(s.cpu_us_per_request, 1),
            _times(r.cpu_us_per_request),
            number(s.cpu_percent, 0),
            str(s.non_2xx_3xx),
            str(s.socket_errors),
        )
        rows.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"


def spread(values: Sequence[float]) -> float:
    """(max - min) / median: how far apart the rounds landed."""
    middle = statistics.median(values)
    return (max(values) - min(values)) / middle if middle else 0.0


def rounds_table(targets: Sequence[str], runs: Sequence[Measurement], rounds: int) -> str:
    labels = [f"round {n} req/s" for n in range(1, rounds + 1)]
    head = "| target | " + " | ".join(labels) + " | spread |\n"
    head += "|---|" + "--:|" * (rounds + 1) + "\n"
    rows = []
    for name in targets:
        rates = [m.wrk.req_per_s for m in runs if m.target == name]
        cells = [number(rate, 0) for rate in rates] + [f"{spread(rates):.0%}"]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"


_WORKERS_RE = re.compile(r"^(lbproxy-[a-z0-9]+)-(\d+)w$")


def scaling_table(loads: Mapping[str, Sequence[Summary]]) -> str:
    """req/s of lbproxy with N workers over req/s with one, per load and engine; empty when the
    run measured one worker count only."""
    rows = []
    for load, summaries in loads.items():
        by_name = {s.target: s for s in summaries}
        for s in summaries:
            match = _WORKERS_RE.match(s.target)
            single = by_name.get(match.group(1)) if match else None
            if match is None or single is None:
                continue
            cells = (
                load,
                match.group(1),
                match.group(2),
                number(single.req_per_s, 0),
                number(s.req_per_s, 0),
                _times(_ratio(s.req_per_s, single.req_per_s)),
                number(single.cpu_us_per_request, 1),
                number(s.cpu_us_per_request, 1),
            )
            rows.append("| " + " | ".join(cells) + " |")
    if not rows:
        return ""
    head = (
        "| load | target | workers | req/s, 1 worker | req/s, N workers | scaling "
        "| CPU us/req, 1 worker | CPU us/req, N workers |\n"
        "|---|---|--:|--:|--:|--:|--:|--:|\n"
    )
    return head + "\n".join(rows) + "\n"


@dataclass(frozen=True, slots=True)
class LoadReport:
    """One load's part of the report."""

    name: str
    title: str
    summaries: list[Summary]
    ratios: dict[str, Ratios]
    rounds_md: str


def report_load(
    name: str, title: str, targets: Sequence[str], runs: Sequence[Measurement], rounds: int
) -> LoadReport:
    mine = [m for m in runs if m.load == name]
    summaries = [
        summarise(n, [m for m in mine if m.target == n])
        for n in targets
        if any(m.target == n for m in mine)
    ]
    base = next((s for s in summaries if s.target == BASELINE), None)
    ratios = {s.target: ratios_to(s, base) for s in summaries}
    return LoadReport(name, title, summaries, ratios, rounds_table(targets, mine, rounds))


def render_markdown(meta: Mapping[str, object], loads: Sequence[LoadReport]) -> str:
    facts = "\n".join(f"- {key}: {value}" for key, value in meta.items())
    parts = [f"# lbproxy side-by-side benchmark\n\n{facts}\n\n## Medians over rounds\n\n"]
    for load in loads:
        parts.append(
            f"### {load.name}: {load.title}\n\n{summary_table(load.summaries, load.ratios)}\n"
        )
    parts.append(
        "Ratios divide by nginx-as-proxy from this run, under the same load: above 1.00x is "
        "better for req/s, below 1.00x is better for latency and CPU. Error columns are totals "
        "over all rounds; proxy CPU % is the proxy's CPU time over wall time (100 = one CPU "
        "saturated).\n\n"
    )
    scaling = scaling_table({load.name: load.summaries for load in loads})
    if scaling:
        parts.append(
            "## lbproxy worker scaling\n\n"
            f"{scaling}\n"
            "Scaling is req/s with N workers over req/s with one, same load and engine. It can "
            "only approach N when N CPUs are free for lbproxy (see pinning above).\n\n"
        )
    parts.append("## Requests per second, round by round\n\n")
    for load in loads:
        parts.append(f"### {load.name}: {load.title}\n\n{load.rounds_md}\n")
    parts.append(
        "Spread is (max - min) / median over rounds; above ~10 % the machine was busy during the "
        "run: rerun with more rounds before trusting small differences.\n"
    )
    return "".join(parts)


def write_chart(loads: Sequence[LoadReport], path: Path) -> bool:
    try:
        import matplotlib  # type: ignore[import-not-found,unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        print("matplotlib is not importable: skipping the chart (pip install matplotlib)")
        return False
    figure, axes_row = plt.subplots(1, len(loads), figsize=(4.5 * len(loads), 4.5), squeeze=False)
    for axes, load in zip(axes_row[0], loads, strict=True):
        names = [s.target for s in load.summaries if load.ratios[s.target].req_per_s is not None]
        values = [load.ratios[name].req_per_s or 0.0 for name in names]
        colours = ["#999999" if n == BASELINE else "#4c72b0" for n in names]
        axes.bar(range(len(names)), values, color=colours)
        axes.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
        axes.axhline(1.0, color="black", linewidth=0.8)
        axes.set_title(f"{load.name}: {load.title}", fontsize=9)
        for index, value in enumerate(values):
            axes.annotate(f"{value:.2f}x", (index, value), ha="center", va="bottom", fontsize=8)
    axes_row[0][0].set_ylabel("req/s relative to nginx as proxy")
    figure.suptitle("lbproxy side-by-side (median over rounds)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def write_report(
    out: Path,
    meta: Mapping[str, object],
    targets: Sequence[str],
    loads: Mapping[str, str],
    runs: Sequence[Measurement],
    *,
    rounds: int,
) -> None:
    """Print the Markdown report and write it, with JSON and a chart, under out/. ``loads``
    maps each load's name to its description, in the order to report them."""
    reports = [report_load(n, title, targets, runs, rounds) for n, title in loads.items()]
    markdown = render_markdown(meta, reports)
    print("\n" + markdown)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"sidebyside-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}"
    document = {
        "meta": dict(meta),
        "loads": dict(loads),
        "summary": {
            r.name: [asdict(s) | {"vs_nginx": asdict(r.ratios[s.target])} for s in r.summaries]
            for r in reports
        },
        "runs": [
            asdict(m) | {"cpu_us_per_request": m.cpu_us_per_request, "cpu_percent": m.cpu_percent}
            for m in runs
        ],
    }
    written = [stem.with_suffix(".md"), stem.with_suffix(".json")]
    written[0].write_text(markdown)
    written[1].write_text(json.dumps(document, indent=2) + "\n")
    if write_chart(reports, stem.with_suffix(".png")):
        written.append(stem.with_suffix(".png"))
    print("wrote " + ", ".join(str(p) for p in written))
