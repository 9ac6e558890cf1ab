"""The report as one PNG: spend and input tokens per day (before vs after), latency and savings per template,
and each calibrated route's coverage / agreement curve with the threshold it applies.

matplotlib's object API with the Agg canvas (no pyplot, no display, safe in the dashboard's worker threads).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

MAX_TEMPLATES = 8  # the chart shows the templates with the largest baseline spend


def render_png(report: dict[str, Any]) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 11.5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplot_mosaic([["spend", "tokens"], ["latency", "saved"], ["curve", "curve"]])
    spend_ax, tokens_ax, latency_ax, saved_ax = (axes[k] for k in ("spend", "tokens", "latency", "saved"))
    draw_calibration(axes["curve"], report.get("calibration") or [])
    days = report["by_day"]
    labels = [d["day"][5:] for d in days]  # MM-DD
    x = range(len(days))

    for offset, key, label in (
        (-0.27, "spend_before_uncached", "before (uncached)"),
        (0.0, "spend_before_cached", "before (cached)"),
        (0.27, "spend_after", "after"),
    ):
        spend_ax.bar([i + offset for i in x], [d[key] for d in days], 0.27, label=label)
    _style(spend_ax, "Spend per day (\\$)", labels)

    tokens_ax.bar([i - 0.2 for i in x], [d["input_tokens_before"] for d in days], 0.4, label="before")
    tokens_ax.bar([i + 0.2 for i in x], [d["input_tokens_after"] for d in days], 0.4, label="after")
    _style(tokens_ax, "Input tokens per day", labels)

    templates = [t for t in report["by_template"] if t["template_id"] is not None][:MAX_TEMPLATES]
    names = [_short_name(t) for t in templates]
    y = range(len(templates))
    latency_ax.barh(
        [i - 0.2 for i in y], [t["latency_p50_before_ms"] or 0 for t in templates], 0.4, label="before"
    )
    latency_ax.barh(
        [i + 0.2 for i in y], [t["latency_p50_after_ms"] or 0 for t in templates], 0.4, label="after"
    )
    _style_h(latency_ax, "Latency p50 per template (ms)", names)

    saved_ax.barh([i - 0.2 for i in y], [t["saved_vs_uncached"] for t in templates], 0.4, label="vs uncached")
    saved_ax.barh([i + 0.2 for i in y], [t["saved_vs_cached"] for t in templates], 0.4, label="vs cached")
    _style_h(saved_ax, "Dollars saved per template", names)

    totals = report["totals"]
    figure.suptitle(
        f"PromptIntern savings: {totals['requests']:,} requests, "
        f"routed {100 * (totals['routed_share'] or 0):.1f}%, "
        f"saved \\${totals['saved_vs_cached']:,.6f} vs the cached baseline "
        f"(\\${totals['saved_vs_uncached']:,.6f} vs uncached)"
    )
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def draw_calibration(ax: Any, routes: list[dict[str, Any]]) -> None:
    """Routed agreement against coverage per calibrated route (held-out), the applied threshold marked."""
    ax.set_title("Selective routing: agreement of the routed answers vs the share routed (held-out)")
    ax.set_xlabel("coverage (share of requests served locally)")
    ax.set_ylabel("routed agreement")
    drawn = 0
    for route in routes[:MAX_TEMPLATES]:
        model = route.get("model") or {}
        curve = model.get("curve") or []
        if not curve:
            continue
        label = _short_name(route)
        line = ax.plot([p["coverage"] for p in curve], [p["agreement"] for p in curve], label=label)[0]
        ax.plot(
            [p["coverage"] for p in curve], [p["lower_bound"] for p in curve], ls=":", color=line.get_color()
        )
        applied = [
            p for p in curve if route.get("threshold") is not None and p["threshold"] >= route["threshold"]
        ]
        if applied:
            point = applied[-1]  # the lowest calibrated threshold still at or above the one applied
            ax.plot([point["coverage"]], [point["agreement"]], "o", color=line.get_color())
        ax.axhline(model.get("target", 0.9), color=line.get_color(), lw=0.6, ls="--")
        drawn += 1
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    if drawn:
        ax.legend(fontsize="small", title="solid: agreement, dotted: lower bound, dashed: target, o: applied")
    else:
        ax.text(0.5, 0.5, "no calibrated model yet", ha="center", va="center", transform=ax.transAxes)


def write_png(report: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(render_png(report))
    return path


def _short_name(template: dict[str, Any]) -> str:
    name = template["template_name"] or template["template_id"]
    name = name if len(name) <= 24 else name[:23] + "…"
    return name.replace("$", r"\$")  # a bare $ would start matplotlib mathtext


def _style(ax: Any, title: str, labels: list[str]) -> None:
    ax.set_title(title)
    ax.set_xticks(range(len(labels)), labels, rotation=45 if len(labels) > 7 else 0)
    if labels:
        ax.legend(fontsize="small")


def _style_h(ax: Any, title: str, labels: list[str]) -> None:
    ax.set_title(title)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()  # largest baseline first, at the top
    if labels:
        ax.legend(fontsize="small")
