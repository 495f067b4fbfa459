#!/usr/bin/env python3
"""Render a Grafana dashboard's panels to one PNG from a live Prometheus.

Reads a dashboard JSON model (e.g. ci/dashboards/overview.json), runs every target's
`expr` through Prometheus' /api/v1/query_range, and draws the panels on a grid that
follows their gridPos: one line per series for "timeseries" panels (legend filled from
the series' labels like Grafana's `{{label}}`), the last value in large type over a
sparkline for "stat" panels.

Grafana variables are substituted the way ci tests evaluate the queries:
`$__rate_interval` -> 1m, `$__range` -> 5m, `$pool` -> .* (override with --var).

Usage:
  scripts/render_dashboard.py --prometheus http://127.0.0.1:9090 \
      --dashboard ci/dashboards/overview.json --start 1700000000 --end 1700000300 \
      --step 1 --out docs/dashboard.png [--panels N]

Needs only the standard library and matplotlib. Exits 1 with a message naming the
panel and the query when a query fails (or, with --require-data, returns nothing).
"""

import argparse
import datetime as dt
import json
import math
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

DEFAULT_VARS = {"__rate_interval": "1m", "__range": "5m", "pool": ".*"}

# Grafana's classic palette, in order.
PALETTE = [
    "#73BF69", "#F2CC0C", "#8AB8FF", "#FF780A", "#F2495C", "#5794F2", "#B877D9",
    "#37872D", "#FADE2A", "#C4162A", "#1F60C4", "#8F3BB8", "#96D98D", "#FFB357",
    "#FF7383", "#CA95E5", "#FFEE52", "#C0D8FF",
]
BG, PANEL_BG, TEXT, MUTED, GRID, BORDER = "#111217", "#181b1f", "#d8d9da", "#8e8e8e", "#2c3235", "#2c3235"

LEGEND_VAR = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
DASH_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::[A-Za-z0-9_]+)?\}|\[\[([A-Za-z_][A-Za-z0-9_]*)\]\]|\$([A-Za-z_][A-Za-z0-9_]*)")


class RenderError(Exception):
    pass


def die(msg):
    print("render_dashboard: " + msg, file=sys.stderr)
    sys.exit(1)


def substitute(expr, variables):
    def repl(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in variables:
            raise RenderError("unknown dashboard variable ${%s} (pass --var %s=VALUE)" % (name, name))
        return variables[name]
    return DASH_VAR.sub(repl, expr)


def legend(fmt, metric):
    if fmt and fmt != "__auto":
        return LEGEND_VAR.sub(lambda m: metric.get(m.group(1), ""), fmt).strip() or "{}"
    name = metric.get("__name__", "")
    labels = ", ".join('%s="%s"' % (k, v) for k, v in sorted(metric.items()) if k != "__name__")
    return name + ("{%s}" % labels if labels or not name else "")


def query_range(base, expr, start, end, step, timeout):
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    url = base.rstrip("/") + "/api/v1/query_range"
    req = urllib.request.Request(url, data=params.encode(), method="POST",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = json.load(r)
    except urllib.error.HTTPError as e:
        try:
            body = json.load(e)
        except Exception:
            raise RenderError("HTTP %d from %s" % (e.code, url))
    except (urllib.error.URLError, OSError) as e:
        raise RenderError("cannot reach %s: %s" % (url, getattr(e, "reason", e)))
    except ValueError as e:
        raise RenderError("response from %s is not JSON: %s" % (url, e))
    if body.get("status") != "success":
        raise RenderError("%s: %s" % (body.get("errorType", "error"), body.get("error", "unknown error")))
    data = body.get("data", {})
    if data.get("resultType") != "matrix":
        raise RenderError("expected a range vector (matrix), got %s" % data.get("resultType"))
    out = []
    for s in data.get("result", []):
        ts = [float(t) for t, _ in s["values"]]
        vs = [float(v) for _, v in s["values"]]  # float() reads "NaN", "+Inf", "-Inf"
        out.append((s.get("metric", {}), ts, vs))
    return out


def panels_in_order(dash):
    """Top-level panels (and those inside collapsed rows), ordered as Grafana shows them."""
    flat = []
    for p in dash.get("panels", []):
        if p.get("type") == "row":
            flat.extend(p.get("panels", []))
        else:
            flat.append(p)
    flat = [p for p in flat if p.get("targets")]
    return sorted(flat, key=lambda p: (p.get("gridPos", {}).get("y", 0), p.get("gridPos", {}).get("x", 0)))


def fmt_value(v, unit, decimals=None):
    if v is None or math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if unit == "percentunit":
        return "%.*f%%" % (1 if decimals is None else decimals, v * 100)
    if unit == "percent":
        return "%.*f%%" % (1 if decimals is None else decimals, v)
    suffix = {"ms": " ms", "s": " s", "reqps": " req/s", "ops": " ops/s"}.get(unit, "")
    if unit == "ms" and abs(v) >= 1000:
        return "%.2f s" % (v / 1000)
    if decimals is not None:
        return "%.*f%s" % (decimals, v, suffix)
    a = abs(v)
    for div, p in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            return "%.3g%s%s" % (v / div, p, suffix)
    return ("%d" % v if v == int(v) else "%.3g" % v) + suffix


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prometheus", required=True, help="base URL, e.g. http://127.0.0.1:9090")
    ap.add_argument("--dashboard", required=True, help="Grafana dashboard JSON model")
    ap.add_argument("--start", required=True, type=float, help="unix seconds")
    ap.add_argument("--end", required=True, type=float, help="unix seconds")
    ap.add_argument("--step", type=float, default=1.0, help="query step in seconds (default 1)")
    ap.add_argument("--out", required=True, help="PNG to write")
    ap.add_argument("--panels", type=int, default=0, help="render only the first N panels (default all)")
    ap.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                    help="dashboard variable value (defaults: __rate_interval=1m, __range=5m, pool=.*)")
    ap.add_argument("--width", type=int, default=1600, help="image width in pixels (default 1600)")
    ap.add_argument("--style", choices=("dark", "light"), default="dark")
    ap.add_argument("--require-data", action="store_true", help="also fail when a query returns no series")
    ap.add_argument("--timeout", type=float, default=30.0, help="per-query timeout in seconds")
    args = ap.parse_args()

    if args.end <= args.start:
        die("--end must be after --start")
    if args.step <= 0:
        die("--step must be positive")
    variables = dict(DEFAULT_VARS)
    for kv in args.var:
        if "=" not in kv:
            die("--var expects NAME=VALUE, got %r" % kv)
        k, v = kv.split("=", 1)
        variables[k.lstrip("$")] = v

    try:
        with open(args.dashboard) as f:
            dash = json.load(f)
    except (OSError, ValueError) as e:
        die("cannot read dashboard %s: %s" % (args.dashboard, e))
    panels = panels_in_order(dash)
    if args.panels > 0:
        panels = panels[: args.panels]
    if not panels:
        die("no panels with targets in %s" % args.dashboard)

    # Query everything first, so a failing query fails before any drawing.
    results = []
    for i, p in enumerate(panels, 1):
        title = p.get("title", "panel %d" % i)
        series = []
        for t in p["targets"]:
            if t.get("hide"):
                continue
            raw = t.get("expr", "")
            where = "panel %d %r, target %s" % (i, title, t.get("refId", "?"))
            try:
                expr = substitute(raw, variables)
                got = query_range(args.prometheus, expr, args.start, args.end, args.step, args.timeout)
            except RenderError as e:
                die("%s: query failed: %s\n  expr: %s" % (where, e, raw))
            if not got and args.require_data:
                die("%s: query returned no series\n  expr: %s" % (where, expr))
            for metric, ts, vs in got:
                series.append((legend(t.get("legendFormat", ""), metric), ts, vs))
        results.append((p, series))

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.dates as mdates
        from matplotlib.ticker import FuncFormatter, MaxNLocator
    except ImportError:
        die("matplotlib is required (pip install matplotlib)")

    global BG, PANEL_BG, TEXT, MUTED, GRID, BORDER
    if args.style == "light":
        BG, PANEL_BG, TEXT, MUTED, GRID, BORDER = "#f4f5f5", "#ffffff", "#24292e", "#6e7079", "#e4e6ea", "#d0d3d9"

    # Layout: Grafana's 24-column grid, placed in pixels (one row unit ~36 px at 1600 px).
    dpi = 100
    W = float(args.width)
    scale = W / 1600
    unit_px, pad, gap, header_px = 36 * scale, 8 * scale, 8 * scale, 56 * scale
    top = min(p.get("gridPos", {}).get("y", 0) for p, _ in results)
    rows = max(p.get("gridPos", {}).get("y", 0) + p.get("gridPos", {}).get("h", 8) for p, _ in results) - top
    H = header_px + rows * unit_px + pad
    colw = (W - 2 * pad) / 24
    fig = plt.figure(figsize=(W / dpi, H / dpi), dpi=dpi, facecolor=BG)
    fs = max(0.6, scale)  # font scale

    def rect(x, y_top, w, h):
        """Pixel box (x, y from the top) -> figure fraction [left, bottom, width, height]."""
        return [x / W, 1 - (y_top + h) / H, max(w, 1) / W, max(h, 1) / H]

    t0 = dt.datetime.fromtimestamp(args.start, dt.timezone.utc)
    t1 = dt.datetime.fromtimestamp(args.end, dt.timezone.utc)
    fig.text(pad / W, 1 - header_px * 0.5 / H, dash.get("title", args.dashboard), color=TEXT, fontsize=16 * fs,
             fontweight="bold", va="center")
    fig.text(1 - pad / W, 1 - header_px * 0.5 / H,
             "%s  to  %s UTC    step %gs    %s" % (t0.strftime("%Y-%m-%d %H:%M:%S"), t1.strftime("%H:%M:%S"), args.step,
                                                  "  ".join("%s=%s" % kv for kv in sorted(variables.items()))),
             color=MUTED, fontsize=9 * fs, ha="right", va="center")

    xlim = (mdates.date2num(t0), mdates.date2num(t1))
    short_span = args.end - args.start < 6 * 3600
    title_h, ytick_w, xtick_h, right_m, leg_line = 26 * scale, 62 * scale, 20 * scale, 12 * scale, 16 * scale
    for p, series in results:
        g = p.get("gridPos", {})
        gx, gy = g.get("x", 0), g.get("y", 0) - top
        gw, gh = min(24 - gx, g.get("w", 12)), g.get("h", 8)
        px, py = pad + gx * colw + gap / 2, header_px + gy * unit_px + gap / 2
        pw, ph = gw * colw - gap, gh * unit_px - gap
        defaults = p.get("fieldConfig", {}).get("defaults", {})
        unit = defaults.get("unit", "short")
        decimals = defaults.get("decimals")

        # Panel frame and title (inside the panel, like Grafana's header).
        frame = fig.add_axes(rect(px, py, pw, ph))
        frame.set_facecolor(PANEL_BG)
        frame.set_xticks([]), frame.set_yticks([])
        for s in frame.spines.values():
            s.set_color(BORDER)
        frame.text(8 * scale / pw, 1 - (title_h / 2) / ph, shorten(p.get("title", ""), int(pw / (7.5 * fs))),
                   transform=frame.transAxes, color=TEXT, fontsize=10.5 * fs, fontweight="bold", va="center")

        colors = [PALETTE[i % len(PALETTE)] for i in range(len(series))]
        if not series:
            frame.text(0.5, 0.45, "No data", color=MUTED, fontsize=12 * fs, ha="center", va="center",
                       transform=frame.transAxes)
            continue

        if p.get("type") == "stat":
            ax = fig.add_axes(rect(px + 4, py + title_h, pw - 8, ph - title_h - 4), facecolor="none")
            n = len(series)
            for i, (name, ts, vs) in enumerate(series):
                finite = [v for v in vs if not math.isnan(v)]
                last = finite[-1] if finite else float("nan")
                color = stat_color(defaults, last, colors[i])
                text = stat_text(defaults, last) or fmt_value(last, unit, decimals)
                # Each series gets its own slice of the panel, its sparkline under its value.
                x0, x1 = i / n, (i + 1) / n
                ys = [v for v in vs if not math.isnan(v) and not math.isinf(v)]
                if len(ys) > 1:
                    lo, hi = min(ys), max(ys)
                    span = (hi - lo) or 1.0
                    sx = [x0 + (x1 - x0) * (t - args.start) / (args.end - args.start) for t in ts]
                    sy = [0.04 + 0.32 * (v - lo) / span if not (math.isnan(v) or math.isinf(v)) else float("nan")
                          for v in vs]
                    ax.plot(sx, sy, color=color, alpha=0.5, linewidth=1.2)
                    ax.fill_between(sx, 0.04, [0.04 if math.isnan(v) else v for v in sy], color=color, alpha=0.12,
                                    linewidth=0)
                big = (24 if n <= 2 else 18 if n <= 4 else 13) * fs
                ax.text((x0 + x1) / 2, 0.56, text, color=color, fontsize=big, fontweight="bold", ha="center", va="center")
                ax.text((x0 + x1) / 2, 0.9, shorten(name, max(8, int(pw / n / (6.5 * fs)))), color=MUTED,
                        fontsize=8.5 * fs, ha="center", va="center")
            ax.set_xlim(0, 1), ax.set_ylim(0, 1)
            ax.axis("off")
            continue

        # Timeseries: plot area, then x tick labels, then a legend strip.
        nser = len(series)
        leg_cols = max(1, min(5, int(pw / (190 * scale))))
        leg_rows = min(math.ceil(nser / leg_cols), 3)
        max_leg = leg_cols * leg_rows
        leg_h = leg_rows * leg_line + 6 * scale
        plot_h = ph - title_h - xtick_h - leg_h
        ax = fig.add_axes(rect(px + ytick_w, py + title_h, pw - ytick_w - right_m, plot_h), facecolor="none")
        custom = defaults.get("custom", {})
        stacked = custom.get("stacking", {}).get("mode", "none") not in ("none", None)
        bars = custom.get("drawStyle") == "bars"
        fill = custom.get("fillOpacity", 0) >= 10 and nser <= 2
        handles, base = [], {}
        for i, (name, ts, vs) in enumerate(series):
            xs = [mdates.date2num(dt.datetime.fromtimestamp(t, dt.timezone.utc)) for t in ts]
            ys = [v if not math.isinf(v) else float("nan") for v in vs]
            zeroed = [0.0 if math.isnan(v) else v for v in ys]
            if stacked:
                lower = [base.get(t, 0.0) for t in ts]
                upper = [lo_ + v for lo_, v in zip(lower, zeroed)]
                base.update(zip(ts, upper))
                ax.fill_between(xs, lower, upper, color=colors[i], alpha=0.35, linewidth=0, step="mid" if bars else None)
                (ln,) = ax.plot(xs, upper, color=colors[i], linewidth=1.3, drawstyle="steps-mid" if bars else "default")
            elif bars:
                (ln,) = ax.plot(xs, ys, color=colors[i], linewidth=1.2, drawstyle="steps-mid")
                ax.fill_between(xs, 0, zeroed, color=colors[i], alpha=0.25, step="mid", linewidth=0)
            else:
                (ln,) = ax.plot(xs, ys, color=colors[i], linewidth=1.5)
                if fill:
                    ax.fill_between(xs, 0, zeroed, color=colors[i], alpha=0.08, linewidth=0)
            handles.append((ln, name))

        ax.set_xlim(*xlim)
        lo, hi = defaults.get("min"), defaults.get("max")
        cur_lo, cur_hi = ax.get_ylim()
        finite = [v for _, _, vs in series for v in vs if not (math.isnan(v) or math.isinf(v))]
        if lo is None and (not finite or min(finite) >= 0):
            lo = 0  # Grafana-like: counts, rates and latencies start at zero
        if hi is None and (not finite or max(finite) <= 0) and lo == 0:
            hi = 1  # all zero (or no finite value): a 0..1 axis, not -0.05..0.05
        if lo is not None or hi is not None:
            lo = cur_lo if lo is None else lo
            hi = max(cur_hi, lo + 1e-9) if hi is None else hi
            ax.set_ylim(lo, hi if hi > lo else lo + 1)
        ax.yaxis.set_major_formatter(FuncFormatter(
            lambda v, _pos, u=unit: fmt_value(v, u, 0 if u == "percentunit" else None)))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=max(2, int(plot_h / (28 * scale)))))
        locator = mdates.AutoDateLocator(minticks=2, maxticks=max(4, int((pw - ytick_w) / (110 * scale))))
        locator.intervald[mdates.SECONDLY] = [1, 2, 5, 10, 15, 20, 30]
        locator.intervald[mdates.MINUTELY] = [1, 2, 5, 10, 15, 20, 30]
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S" if short_span else "%m-%d %H:%M",
                                                          tz=dt.timezone.utc))
        ax.tick_params(colors=MUTED, labelsize=8 * fs, length=0, pad=4)
        ax.tick_params(axis="x", pad=7 * scale)
        ax.grid(True, color=GRID, linewidth=0.6)
        for s in ax.spines.values():
            s.set_visible(False)

        lax = fig.add_axes(rect(px + 8 * scale, py + ph - leg_h, pw - 16 * scale, leg_h), facecolor="none")
        lax.axis("off")
        shown = handles[:max_leg]
        width_chars = int((pw - 16 * scale) / leg_cols / (6.2 * fs)) - 3
        labels = [shorten(n, max(8, width_chars)) for _, n in shown]
        if nser > max_leg:
            labels[-1] = "+%d more series" % (nser - max_leg + 1)
        lax.legend([hd for hd, _ in shown], labels, loc="upper left", ncol=leg_cols, frameon=False, fontsize=8 * fs,
                   labelcolor=TEXT, handlelength=1.2, columnspacing=1.2, borderaxespad=0, borderpad=0,
                   handletextpad=0.4, labelspacing=0.35, mode="expand" if leg_cols > 1 else None)

    try:
        fig.savefig(args.out, dpi=dpi, facecolor=BG)
    except OSError as e:
        die("cannot write %s: %s" % (args.out, e))
    print("render_dashboard: wrote %s (%d panels, %d px wide)" % (args.out, len(results), args.width))


def shorten(s, n):
    return s if len(s) <= n else s[: n - 1] + "\u2026"


def stat_text(defaults, v):
    """Text of a value mapping that matches v (e.g. 1 -> READY), if any."""
    if v is None or math.isnan(v):
        return None
    for m in defaults.get("mappings", []) or []:
        if m.get("type") == "value":
            for k, o in m.get("options", {}).items():
                try:
                    if float(k) == v and o.get("text"):
                        return o["text"]
                except ValueError:
                    pass
    return None


def stat_color(defaults, v, fallback):
    """Colour of the threshold step v falls in (Grafana's "thresholds" colour mode)."""
    names = {"green": "#73BF69", "red": "#F2495C", "orange": "#FF9830", "yellow": "#FADE2A", "blue": "#5794F2",
             "purple": "#B877D9", "text": TEXT}
    steps = defaults.get("thresholds", {}).get("steps") or []
    if not steps or v is None or math.isnan(v):
        return fallback
    color = steps[0].get("color", fallback)
    for s in steps[1:]:
        if s.get("value") is not None and v >= s["value"]:
            color = s.get("color", color)
    if len(steps) == 1 and color == "green":
        return fallback
    return names.get(color, color)


if __name__ == "__main__":
    main()
