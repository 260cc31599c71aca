"""The audit's report: ``report.html`` (one self-contained file: styles inline, figures as base64 PNG, no network,
laid out for print too), ``attacks.csv``, ``defenses.csv``, ``points.csv``, and the terminal's headline table."""

from __future__ import annotations

import base64
import csv
import html
import io
from pathlib import Path
from typing import Any

from modelsteal.audit.analysis import SHARES, score

MONEY = "{:,.2f}"


def pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def reach_text(report: dict[str, Any], s: dict[str, Any], share: float) -> str:
    """``"1,581 queries"`` or ``"not reached within 5,000"``; with a price, the money beside it."""
    tag = f"{round(share * 100)}"
    rung = s[f"queries_to_{tag}"]
    if rung is None:
        return f"not reached within {report['ladder'][-1]:,}"
    money = s[f"money_to_{tag}"]
    return f"{rung:,}" + ("" if money is None else f" (${MONEY.format(money)})")


def headline_rows(report: dict[str, Any]) -> list[list[str]]:
    """The manager's table: one row per attacker (battery order)."""
    top = report["ladder"][-1]
    rows = []
    for s in report["attacks"]:
        t = s["top"]
        rows.append([s["attack"], pct(t["clone_accuracy"]) if report["labelled"] else "n/a", pct(t["fidelity"]),
                     *(reach_text(report, s, share) for share in SHARES)])
    header = ["attacker", f"clone accuracy @ {top:,}", f"fidelity @ {top:,}",
              *(f"queries to {round(100 * sh)}% of victim" for sh in SHARES)]
    return [header, *rows]


def format_headline(report: dict[str, Any]) -> str:
    """The headline table as text (the terminal's), with the victim's accuracy and the recommendation."""
    rows = headline_rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    measure = "accuracy" if report["labelled"] else "agreement with itself"
    lines.insert(0, f"victim {measure}: {pct(report['victim_accuracy'])}  ({report['measured_on']})")
    rec = report.get("recommendation")
    if report.get("defenses"):
        lines.append("")
        lines.append(recommendation_text(report) if rec is not None else "no defense operating point meets the "
                     "constraint")
    return "\n".join(lines)


def strength_text(defense: str, strength: Any) -> str:
    return defense if strength is None else f"{defense} {strength:g}" if isinstance(strength, float) else \
        f"{defense} {strength}"


def recommendation_text(report: dict[str, Any]) -> str:
    rec = report["recommendation"]
    undefended = next((r for r in report["defenses"] if r["defense"] == "none"), None)
    cons = f"at most {100 * report['max_accuracy_lost']:g} point(s) of benign accuracy lost"
    what = "clone accuracy" if report["labelled"] else "clone fidelity"
    if rec["defense"] == "none":
        return (f"recommended: no defense: no compared operating point within the constraint ({cons}) leaves the "
                f"best attacker's {what} below the undefended {pct(rec['best_clone'])} (by {rec['best_attacker']})")
    base = "" if undefended is None else f", from {pct(undefended['best_clone'])} undefended"
    return (f"recommended: {strength_text(rec['defense'], rec['strength'])} (constraint: {cons}): benign accuracy "
            f"{pct(rec['defender_accuracy'])} ({100 * rec['accuracy_lost']:+.1f} points lost), mean L1 "
            f"{rec['l1_mean']:.3f}; the closest attacker, {rec['best_attacker']}, reaches {what} "
            f"{pct(rec['best_clone'])}{base}")


# -- figures ------------------------------------------------------------------------------------------------
def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def figure_curves(report: dict[str, Any]) -> str:
    """Clone accuracy (or fidelity) against queries per attacker, log x, with the victim's line and its 90%."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if report["labelled"] else 1, figsize=(11 if report["labelled"] else 6, 4),
                             squeeze=False)
    keys = [("clone_accuracy", "clone accuracy"), ("fidelity", "fidelity (agreement with the target)")]
    if not report["labelled"]:
        keys = keys[1:]
    for ax, (key, name) in zip(axes[0], keys, strict=True):
        for s in report["attacks"]:
            xs = [c["budget"] for c in s["curve"]]
            ax.plot(xs, [100 * c[key] for c in s["curve"]], marker="o", label=s["attack"])
        ref = 100 * (report["victim_accuracy"] if key == "clone_accuracy" else 1.0)
        ax.axhline(ref, color="black", lw=1.2, label="victim" if key == "clone_accuracy" else "target")
        ax.axhline(0.9 * ref, color="gray", lw=0.8, ls="--", label="90% of victim")
        ax.set_xscale("log")
        ax.set_xticks(report["ladder"])
        ax.set_xticklabels([f"{b:,}" for b in report["ladder"]], rotation=30)
        ax.minorticks_off()
        ax.set_xlabel("queries (budget)")
        ax.set_ylabel(f"{name} (%)")
        ax.set_ylim(0, 102)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.suptitle("How fast each attacker clones the model (undefended)")
    return _png(fig)


def figure_defenses(report: dict[str, Any]) -> str:
    """Benign cost (accuracy lost; mean L1) against the best attacker's clone, one curve per defense, the
    undefended point and the recommended one marked."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, rec = report["defenses"], report.get("recommendation")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    what = "best attacker's clone accuracy (%)" if report["labelled"] else "best attacker's clone fidelity (%)"
    base = next((r for r in rows if r["defense"] == "none"), None)
    for ax, key, xlabel in ((axes[0], "accuracy_lost", "benign accuracy lost (points)"),
                            (axes[1], "l1_mean", "mean L1 change of the answers")):
        scale = 100 if key == "accuracy_lost" else 1
        for name in dict.fromkeys(r["defense"] for r in rows if r["defense"] != "none"):
            pts = sorted((r for r in rows if r["defense"] == name), key=lambda r: r["strength"] or 0)
            pts = ([base] if base is not None else []) + pts  # every curve starts at the undefended point
            ax.plot([scale * r[key] for r in pts], [100 * r["best_clone"] for r in pts], marker="o", label=name)
            for r in pts:
                ax.annotate("" if r["strength"] is None else f"{r['strength']:g}", (scale * r[key],
                            100 * r["best_clone"]), fontsize=7, textcoords="offset points", xytext=(3, 3))
        if base is not None:
            ax.scatter([scale * base[key]], [100 * base["best_clone"]], color="black", marker="s", zorder=3,
                       label="undefended")
        if rec is not None:
            ax.scatter([scale * rec[key]], [100 * rec["best_clone"]], s=260, marker="*", color="gold",
                       edgecolor="black", zorder=4, label="recommended")
        if key == "accuracy_lost":
            ax.axvline(100 * report["max_accuracy_lost"], color="gray", ls="--", lw=0.8, label="constraint")
            ax.set_xscale("symlog", linthresh=1.0)  # linear up to 1 point (the constraint), log beyond
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.set_xlim(left=min(0.0, *(100 * r[key] for r in rows)) - 0.1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"What each defense costs users and buys against the attackers (at {report['ladder'][-1]:,} queries)")
    return _png(fig)


# -- HTML ---------------------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:24px auto;
padding:0 16px;color:#1a1a1a;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}th,td{border:1px solid #bbb;padding:4px 8px;
text-align:left}th{background:#eef2f6}td.num{text-align:right}.facts td:first-child{font-weight:600}
.rec{background:#fff8dc;border:1px solid #d8c37a;padding:8px 12px;margin:.8em 0}
img{max-width:100%;height:auto;display:block;margin:.6em 0}.small{color:#555;font-size:.85em}
#points{font-size:.78em}#points td{padding:2px 5px}
@media print{body{max-width:none;margin:0}h2{page-break-after:avoid}img,table{page-break-inside:avoid}
.rec{border:1px solid #000}}
"""


def _table(rows: list[list[str]], *, cls: str = "", ident: str = "", header: bool = True) -> str:
    """An HTML table of ``rows`` (the first one the header; ``header=False`` drops it), every cell escaped."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0]) if header else ""
    head = f"<thead><tr>{head}</tr></thead>" if head else ""
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    attrs = (f' class="{cls}"' if cls else "") + (f' id="{ident}"' if ident else "")
    return f"<table{attrs}>{head}<tbody>{body}</tbody></table>"


def defense_table_rows(report: dict[str, Any]) -> list[list[str]]:
    what = "best clone accuracy" if report["labelled"] else "best clone fidelity"
    rows = [["operating point", "benign accuracy", "accuracy lost", "mean L1", what, "by attacker", "recommended"]]
    rec = report.get("recommendation")
    for r in report["defenses"]:
        mark = "yes" if rec is not None and (r["defense"], r["strength"]) == (rec["defense"], rec["strength"]) else ""
        rows.append([strength_text(r["defense"], r["strength"]), pct(r["defender_accuracy"]),
                     f"{100 * r['accuracy_lost']:+.1f} pts", f"{r['l1_mean']:.3f}", pct(r["best_clone"]),
                     r["best_attacker"], mark])
    return rows


def render_html(report: dict[str, Any], *, curves: str, defenses: str | None) -> str:
    t = report["target"]
    top = report["ladder"][-1]
    facts = [["", ""], ["target", f"{t['target']} ({t['arch'] or 'unknown architecture'}, {t['num_classes']} classes, "
                                  f"inputs {tuple(t['input_shape'])})"],
             ["victim accuracy", f"{pct(report['victim_accuracy'])} — {report['measured_on']}"],
             ["attacker's pool", report["pool"]],
             ["budget ladder", ", ".join(f"{b:,}" for b in report["ladder"]) + " queries"],
             ["price per query", "not given" if report["price_per_query"] is None
              else f"${report['price_per_query']:g}"],
             ["points", f"{report['points']['total']} clones ({report['points']['cached']} from the cache)"]]
    parts = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>modelsteal audit: "
             f"{html.escape(str(t['target']))}</title><style>{_CSS}</style></head><body>",
             f"<h1>How stealable is {html.escape(str(t['target']))}?</h1>",
             _table(facts, cls="facts", header=False),
             "<h2>Headline: queries to clone it</h2>",
             _table(headline_rows(report), ident="headline"),
             f"<p class=small>Clone accuracy and fidelity at the top rung ({top:,} queries). \"Queries to 90%\": the "
             "first rung of the ladder whose clone reaches 90% of the victim's accuracy (money at the price per "
             "query in brackets); \"not reached within N\": no rung up to the budget did.</p>",
             f'<img alt="clone accuracy against queries" src="data:image/png;base64,{curves}">']
    if report["defenses"]:
        parts += ["<h2>Which defense to deploy</h2>"]
        if report.get("recommendation") is not None:
            parts.append(f'<div class="rec" id="recommendation">{html.escape(recommendation_text(report))}</div>')
        parts += [_table(defense_table_rows(report), ident="defenses"),
                  f"<p class=small>Each defense at each strength, attacked at {top:,} queries by "
                  f"{', '.join(report['defense_attackers'])}; the best of their clones is shown. Benign accuracy "
                  "and the L1 change are measured on the same evaluation inputs.</p>",
                  f'<img alt="defense trade-off" src="data:image/png;base64,{defenses}">']
    parts += ["<h2>The attackers</h2>",
              _table([["attacker", "registered attack", "what it does"]] +
                     [[b["attack"], b["registered_as"] + (f" {b['options']}" if b["options"] else ""), b["summary"]]
                      for b in report["battery"]]),
              "<h2>Every point</h2>", _table(point_rows(report), ident="points"),
              "<p class=small>Made by <code>modelsteal audit</code>; docs/audit.md explains every number.</p>",
              "</body></html>"]
    return "\n".join(parts)


POINT_FIELDS = ("attack", "attack_name", "budget", "defense", "strength", "queries", "clone_accuracy", "fidelity",
                "defender_accuracy", "l1_mean", "attack_seconds")


def point_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = [list(POINT_FIELDS)]
    for r in report["records"]:
        rows.append(["" if r.get(k) is None else f"{r[k]:.4f}" if isinstance(r.get(k), float) else str(r[k])
                     for k in POINT_FIELDS])
    return rows


def _write_csv(path: Path, rows: list[list[Any]]) -> None:
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)


def write_report(report: dict[str, Any], out: Path) -> Path:
    """Write ``report.html``, ``attacks.csv``, ``defenses.csv`` and ``points.csv`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    curves = figure_curves(report) if report["attacks"] else ""
    defenses = figure_defenses(report) if report["defenses"] else None
    path = out / "report.html"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(render_html(report, curves=curves, defenses=defenses))
    tmp.replace(path)
    attack_rows = [["attack", "budget", "queries", "clone_accuracy", "fidelity", "victim_accuracy"]]
    for s in report["attacks"]:
        attack_rows += [[s["attack"], c["budget"], c["queries"], c["clone_accuracy"], c["fidelity"],
                         report["victim_accuracy"]] for c in s["curve"]]
    _write_csv(out / "attacks.csv", attack_rows)
    reach = [["attack", *(f"queries_to_{round(100 * s)}" for s in SHARES), *(f"money_to_{round(100 * s)}"
                                                                           for s in SHARES)]]
    reach += [[s["attack"], *(s[f"queries_to_{round(100 * sh)}"] for sh in SHARES),
               *(s[f"money_to_{round(100 * sh)}"] for sh in SHARES)] for s in report["attacks"]]
    _write_csv(out / "reach.csv", reach)
    drows = [["defense", "strength", "defender_accuracy", "accuracy_lost", "l1_mean", "best_attacker", "best_clone"]]
    drows += [[r[k] for k in drows[0]] for r in report["defenses"]]
    _write_csv(out / "defenses.csv", drows)
    _write_csv(out / "points.csv", point_rows(report))
    return path


__all__ = ["format_headline", "render_html", "score", "write_report"]
