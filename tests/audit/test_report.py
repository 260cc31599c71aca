"""The figures of an audit's report against its records: tables, CSVs, plots' data, resume from the cache."""

from __future__ import annotations

import base64
import csv
import io
import json
from html.parser import HTMLParser

import pytest

from modelsteal.audit.report import pct

from .conftest import AUDIT


class _Tables(HTMLParser):
    """Every table's rows (cell texts) by table id, and every <img> src."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id", f"t{len(self.tables)}")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(a["src"])

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _undefended(report, attack):
    return sorted((r for r in report["records"] if r["attack"] == attack and r["defense"] == "none"),
                  key=lambda r: r["budget"])


def test_every_point_was_run_once_within_its_budget(audited):
    report, _ = audited
    assert report["ladder"] == [100, 316]
    seen = {(r["attack"], r["budget"], r["defense"], r["strength"]) for r in report["records"]}
    expected = {(a, b, "none", None) for a in AUDIT["attacks"] for b in (100, 316)}
    expected |= {(a, 316, "mad", s) for a in ("knockoff-random", "knockoff-argmax") for s in (0.2, 1.0)}
    assert seen == expected and len(report["records"]) == len(expected)
    assert all(r["queries"] == r["budget"] for r in report["records"])  # Knockoff spends its budget exactly


def test_queries_to_90_is_the_first_rung_whose_clone_reaches_it(audited):
    report, _ = audited
    v = report["victim_accuracy"]
    assert v > 0.9
    for s in report["attacks"]:
        rows = _undefended(report, s["attack"])
        for share, tag in ((0.9, "90"), (0.95, "95")):
            reached = [r["budget"] for r in rows if r["clone_accuracy"] >= share * v]
            assert s[f"queries_to_{tag}"] == (reached[0] if reached else None)
            money = None if not reached else reached[0] * AUDIT["price_per_query"]
            assert s[f"money_to_{tag}"] == money
        assert s["top"]["clone_accuracy"] == rows[-1]["clone_accuracy"]


def test_defense_rows_and_recommendation_follow_the_records(audited):
    report, _ = audited
    v = report["victim_accuracy"]
    top = report["ladder"][-1]
    for row in report["defenses"]:
        recs = [r for r in report["records"] if r["budget"] == top and r["defense"] == row["defense"]
                and r["strength"] == row["strength"]]
        best = max(recs, key=lambda r: r["clone_accuracy"])
        assert (row["best_attacker"], row["best_clone"]) == (best["attack"], best["clone_accuracy"])
        assert row["accuracy_lost"] == pytest.approx(v - row["defender_accuracy"])
        if row["defense"] == "mad":  # MAD meets its L1 budget (and spends it)
            assert 0.5 * row["strength"] < row["l1_mean"] <= row["strength"] + 1e-4
        else:
            assert row["defense"] == "none" and row["l1_mean"] == 0 and row["accuracy_lost"] == pytest.approx(0)
    allowed = [r for r in report["defenses"] if r["accuracy_lost"] <= AUDIT.get("max_accuracy_lost", 0.01) + 1e-12]
    rec = report["recommendation"]
    assert rec in allowed and rec["best_clone"] == min(r["best_clone"] for r in allowed)


def test_html_tables_and_images_show_the_records(audited):
    report, out = audited
    page = _Tables()
    page.feed((out / "report.html").read_text())
    head = page.tables["headline"]
    assert [r[0] for r in head[1:]] == AUDIT["attacks"]  # one row per attacker, battery order
    for row in head[1:]:
        top = _undefended(report, row[0])[-1]
        assert row[1] == pct(top["clone_accuracy"]) and row[2] == pct(top["fidelity"])
        q90 = next(s for s in report["attacks"] if s["attack"] == row[0])["queries_to_90"]
        expected = (f"not reached within {report['ladder'][-1]:,}" if q90 is None
                    else f"{q90:,} (${q90 * AUDIT['price_per_query']:,.2f})")
        assert row[3] == expected
    assert len(page.tables["defenses"]) == 1 + len(report["defenses"])
    assert sum(r[-1] == "yes" for r in page.tables["defenses"][1:]) == 1
    assert len(page.tables["points"]) == 1 + len(report["records"])
    from PIL import Image

    assert len(page.images) == 2
    for src in page.images:
        assert src.startswith("data:image/png;base64,")  # inline: no file, no network
        im = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert im.width > 400 and im.height > 200
    assert "http://" not in (out / "report.html").read_text().replace(str(AUDIT), "")


def test_csvs_and_json_hold_the_same_numbers(audited):
    report, out = audited
    rows = list(csv.DictReader((out / "attacks.csv").open()))
    assert len(rows) == sum(len(s["curve"]) for s in report["attacks"])
    for r in rows:
        rec = _undefended(report, r["attack"])
        rec = next(x for x in rec if x["budget"] == int(r["budget"]))
        assert float(r["clone_accuracy"]) == pytest.approx(rec["clone_accuracy"])
    saved = json.loads((out / "report.json").read_text())
    assert saved["attacks"] == report["attacks"] and saved["records"] == report["records"]


def test_rerun_resumes_from_the_cache(audited, victim_path):
    from modelsteal import audit

    report, out = audited
    again = audit(victim_path, out=out, **AUDIT)
    assert again["points"] == {"total": len(report["records"]), "computed": 0, "cached": len(report["records"])}
    assert again["records"] == report["records"]


def test_the_strongest_attacker_of_the_ladder_faces_every_defense(victim_path, tmp_path):
    """A defense is judged against the attacker that did best undefended, even when it is not a defense attacker:
    a recommendation made against weaker attackers only would overrate the defense."""
    from modelsteal import audit

    report = audit(victim_path, pool=["sample-patches"], test="digits", budget=100, attacks=["knockoff-argmax", "jbda"],
                   defense_attacks=["knockoff-argmax"], defenses=["mad:1.0"], out=tmp_path, progress=False,
                   backend="serial")
    top = {r["attack"]: r["clone_accuracy"] for r in report["records"] if r["defense"] == "none"}
    strongest = max(top, key=top.get)
    assert report["defense_attackers"] == ["knockoff-argmax"] + ([strongest] if strongest != "knockoff-argmax" else [])
    mad = next(r for r in report["defenses"] if r["defense"] == "mad")
    assert set(mad["clones"]) == set(report["defense_attackers"])
    assert report["points"]["total"] == len(report["records"]) == 2 + len(report["defense_attackers"])
    again = audit(victim_path, pool=["sample-patches"], test="digits", budget=100, attacks=["knockoff-argmax", "jbda"],
                  defense_attacks=["knockoff-argmax"], defenses=["mad:1.0"], out=tmp_path, progress=False,
                  backend="serial")
    assert again["points"]["computed"] == 0 and again["records"] == report["records"]
