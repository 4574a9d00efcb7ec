"""The report's timeline: inline SVG, one block per host, bars on one common time axis.

Every span of `timeline.jsonl` (results.timeline) is a bar; a server's bar is light from start
to ready and solid from ready to stop, so a slow start-up shows as a long light bar. Overlapping
spans of a host go on separate rows (first row that is free). Hover text (SVG <title>) gives the
exact times; a bar with a log links to it. No script: the page must work from a file:// URL.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from html import escape
from typing import Iterable, Sequence

WIDTH = 1200            # the SVG's user units; it scales to the page's width
ROW_H, ROW_GAP, PAD = 16, 4, 6
MIN_BAR = 2.0
CHAR_W = 6.0            # about one character of the 10-unit label font
STEPS_S = (0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200)
KIND_CLASSES = ("prep", "reset", "drain", "server", "request", "payload")


def clock(epoch: float) -> str:
    """19:30:01.123 (UTC), what hover texts show."""
    moment = dt.datetime.fromtimestamp(epoch, dt.timezone.utc)
    return moment.strftime("%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


@dataclass(frozen=True)
class Axis:
    t0: float
    t1: float

    @classmethod
    def around(cls, spans: Sequence[dict]) -> "Axis":
        starts = [s["start"] for s in spans]
        ends = [t for s in spans for t in (s.get("end"), s.get("ready"), s["start"])
                if isinstance(t, (int, float))]
        t0 = min(starts, default=0.0)
        return cls(t0, max(max(ends, default=t0), t0 + 1.0))

    def x(self, t: float) -> float:
        return (t - self.t0) / (self.t1 - self.t0) * WIDTH

    def ticks(self) -> list[tuple[float, str]]:
        length = self.t1 - self.t0
        step = next((s for s in STEPS_S if length / s <= 12), STEPS_S[-1])
        out, at = [], 0.0
        while at <= length + 1e-9 and len(out) < 40:
            label = f"+{at:g}s" if step < 60 else f"+{int(at) // 60}m{int(at) % 60:02d}s"
            out.append((self.x(self.t0 + at), label))
            at += step
        return out


def span_end(span: dict, open_end: float | None = None) -> float:
    """Where the bar ends: its end; a span with no end (left running) reaches `open_end`, the
    end of the axis, or else its ready or start."""
    if not isinstance(span.get("end"), (int, float)) and open_end is not None:
        return open_end
    for key in ("end", "ready", "start"):
        if isinstance(span.get(key), (int, float)):
            return float(span[key])
    return 0.0


def pack_rows(spans: Sequence[dict], axis: Axis) -> list[list[dict]]:
    """Spans sorted by start, each on the first row where it does not overlap (in pixels)."""
    rows: list[list[dict]] = []
    row_ends: list[float] = []
    for span in sorted(spans, key=lambda s: (s["start"], -span_end(s))):
        left = axis.x(span["start"])
        right = max(axis.x(span_end(span, axis.t1)), left + MIN_BAR)
        for index, end in enumerate(row_ends):
            if left >= end + 1:
                rows[index].append(span)
                row_ends[index] = right
                break
        else:
            rows.append([span])
            row_ends.append(right)
    return rows


def hover_text(span: dict) -> str:
    start = span["start"]
    lines = [f"{span.get('name', '')} ({span.get('kind', '')}) on {span.get('host', '')}"]
    if span.get("case"):
        lines.append(f"case {span['case']}")
    lines.append(f"start {clock(start)} UTC")
    if isinstance(span.get("ready"), (int, float)):
        lines.append(f"ready {clock(span['ready'])} (+{span['ready'] - start:.2f}s)")
    if isinstance(span.get("end"), (int, float)):
        lines.append(f"end   {clock(span['end'])} ({span['end'] - start:.2f}s in all)")
    else:
        lines.append("no end recorded (still running when the run ended)")
    lines.append(f"outcome: {span.get('outcome', '')}")
    if span.get("detail"):
        lines.append(str(span["detail"]))
    if span.get("log"):
        lines.append(f"log: {span['log']}")
    return "\n".join(lines)


def _label(text: str, width: float) -> str:
    fits = int((width - 4) / CHAR_W)
    if fits < 3:
        return ""
    return text if len(text) <= fits else text[:fits - 1] + "\u2026"


def bar_svg(span: dict, axis: Axis, y: float, href: str | None) -> str:
    kind = span.get("kind", "")
    kind_class = kind if kind in KIND_CLASSES else "other"
    outcome = str(span.get("outcome", "ok"))
    state = "ok" if outcome in ("ok", "skipped") else (
        "cancelled" if outcome == "cancelled" else "running" if outcome == "left running"
        else "failed")
    left = axis.x(span["start"])
    width = max(axis.x(span_end(span, axis.t1)) - left, MIN_BAR)
    parts = [f'<rect class="bar" x="{left:.1f}" y="{y}" width="{width:.1f}" height="{ROW_H}"/>']
    if kind == "server" and isinstance(span.get("ready"), (int, float)):
        ready_x = axis.x(span["ready"])  # the solid part: ready -> stop
        parts.append(f'<rect class="up" x="{ready_x:.1f}" y="{y}" '
                     f'width="{max(left + width - ready_x, 0):.1f}" height="{ROW_H}"/>')
    label = _label(str(span.get("name", "")), width)
    if label:
        parts.append(f'<text x="{left + 2:.1f}" y="{y + ROW_H - 4}">{escape(label)}</text>')
    body = (f'<title>{escape(hover_text(span))}</title>' + "".join(parts))
    if href:
        body = f'<a href="{escape(href)}">{body}</a>'
    return (f'<g class="span k-{kind_class} s-{state}" data-host="{escape(span.get("host", ""))}"'
            f' data-kind="{escape(kind)}" data-outcome="{escape(outcome)}">{body}</g>')


def host_svg(spans: Sequence[dict], axis: Axis, bands: Sequence[tuple[str, float, float]],
             link: dict[str, str], label: str = "") -> str:
    """One host's bars, with the cases as background bands and the axis's grid lines. A group
    with a text alternative, not an image: its bars are links to their logs."""
    rows = pack_rows(spans, axis)
    height = PAD * 2 + max(len(rows), 1) * (ROW_H + ROW_GAP)
    about = escape(f"timeline of {label or 'a host'}: each bar a step, server or request; "
                   "its title has the exact times")
    out = [f'<svg class="lanes" viewBox="0 0 {WIDTH} {height}" width="100%" role="group" '
           f'aria-label="{about}">']
    for index, (case, start, end) in enumerate(bands):
        out.append(f'<rect class="band b{index % 2}" x="{axis.x(start):.1f}" y="0" '
                   f'width="{max(axis.x(end) - axis.x(start), 1):.1f}" height="{height}">'
                   f'<title>{escape(case)}</title></rect>')
    for x, _ in axis.ticks():
        out.append(f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="0" y2="{height}"/>')
    for row_index, row in enumerate(rows):
        y = PAD + row_index * (ROW_H + ROW_GAP)
        out += [bar_svg(span, axis, y, link.get(span.get("log") or "")) for span in row]
    out.append("</svg>")
    return "".join(out)


def axis_svg(axis: Axis, bands: Sequence[tuple[str, float, float]],
             status: dict[str, str]) -> str:
    """The shared header: time ticks and one labelled band per case (coloured by its status)."""
    height = 40
    out = [f'<svg class="axis" viewBox="0 0 {WIDTH} {height}" width="100%">']
    for case, start, end in bands:
        left, width = axis.x(start), max(axis.x(end) - axis.x(start), 1)
        state = {"Pass": "pass", "Fail": "fail"}.get(status.get(case, ""), "none")
        title = f"{case}: {status.get(case, 'no result')}\n{clock(start)} - {clock(end)} UTC " \
                f"({end - start:.1f}s)"
        out.append(f'<g class="caseband c-{state}"><title>{escape(title)}</title>'
                   f'<rect x="{left:.1f}" y="2" width="{width:.1f}" height="18"/>'
                   f'<text x="{left + 2:.1f}" y="15">{escape(_label(case, width))}</text></g>')
    for x, label in axis.ticks():
        out.append(f'<line class="tick" x1="{x:.1f}" x2="{x:.1f}" y1="22" y2="28"/>'
                   f'<text class="ticklabel" x="{min(x + 2, WIDTH - 40):.1f}" y="38">'
                   f'{escape(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def case_bands(spans: Iterable[dict]) -> list[tuple[str, float, float]]:
    """Each case's stretch of time on the timeline: its first span's start to its last end."""
    bounds: dict[str, list[float]] = {}
    for span in spans:
        case = span.get("case") or ""
        if not case:
            continue
        low_high = bounds.setdefault(case, [span["start"], span_end(span)])
        low_high[0] = min(low_high[0], span["start"])
        low_high[1] = max(low_high[1], span_end(span))
    return sorted(((c, lo, hi) for c, (lo, hi) in bounds.items()), key=lambda b: b[1])
