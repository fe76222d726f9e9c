"""The interactive page beside a report's README: ``index.html``, self-contained and offline.

One file: the report's numbers as JSON (from ``aggregate.summarize``, the same figures as the
markdown), Chart.js 4.6.1 embedded (vendored in ``static/``, MIT licence beside it; no CDN), and
a small script: per section a sortable, filterable table of every variant, a Pareto plot whose
x axis is chosen from a list (hover: the variant's config and numbers), learning curves, and a
drill-down per variant (its runs' records). The URL hash holds the view (``#sort=stored_bytes&
dir=asc&filter=lora``), so a view can be shared, and a headless browser test can check it.

Written by hand: no plotting or table library that works offline in one static file does this
sorting and drill-down without a framework and a build step.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from string import Template

import pandas as pd

from peft_bench.core.paths import write_whole
from peft_bench.results.schema import ResultRecord
from peft_bench.results.variants import variant_key

STATIC = Path(__file__).with_name("static")
CHART_JS = STATIC / "chart.umd.min.js"
# (summary column, header, unit kind: "score", "count", "bytes", "s", "pct", "text"); lower is better
# for every column but the score
COLUMNS = [
    ("label", "variant", "text"), ("model", "model", "text"), ("rank", "rank", "text"),
    ("trainable_params", "trainable params", "count"), ("pct_trainable", "% of total", "pct"),
    ("stored_bytes", "stored", "bytes"), ("peak_mem_train_bytes", "peak train mem", "bytes"),
    ("peak_mem_eval_bytes", "peak eval mem", "bytes"), ("train_time_s", "train time", "s"),
    ("step_time_median_s", "step time", "s"), ("warm_switch_s", "warm switch", "s"), ("forgetting", "forgetting", "score"),
]
X_AXES = ["trainable_params", "stored_bytes", "peak_mem_train_bytes", "train_time_s", "step_time_median_s"]


def _clean(v):
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python numbers."""
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def page_data(summary: pd.DataFrame, records: list[ResultRecord], sections: list[tuple[str, str | None, str, str]]) -> dict:
    """What the page shows: per section its variants (the table's numbers, curves, config, and the
    ids of their runs), and every run's record for the drill-down."""
    from matplotlib.colors import to_hex

    from peft_bench.results.plots import method_colour

    runs_of: dict[str, list[str]] = {}
    for r in records:
        runs_of.setdefault(repr(variant_key(r.run)), []).append(r.run_id)
    out = []
    for task, model, title, metric in sections if not summary.empty else ():
        rows = summary[summary["task"] == task]
        if model is not None:
            rows = rows[rows["model"] == model]
        variants = []
        for _, r in rows.iterrows():
            lo, hi = r.get("rank_low"), r.get("rank_high")
            rank = "" if lo is None or pd.isna(lo) or not lo else (f"{int(lo)}" if lo == hi else f"{int(lo)}–{int(hi)}")
            v = {c: _clean(r.get(c)) for c, _, _ in COLUMNS if c != "rank"}
            v.update(rank=rank, rank_low=_clean(lo), score=_clean(r.get(metric)), low=_clean(r.get(f"{metric}_low")),
                     high=_clean(r.get(f"{metric}_high")), method=r["method"], config=_clean(r.get("config") or {}),
                     did_not_train=r.get("did_not_train") or "", loss_curve=_clean(r.get("loss_curve") or []),
                     val_curve=_clean(r.get("val_curve") or []), runs=runs_of.get(repr(r["key"]), []),
                     colour=to_hex(method_colour(r["method"])))
            variants.append(v)
        out.append({"title": title, "metric": metric, "variants": variants})
    by_id = {r.run_id: _clean(r.to_dict()) for r in records}
    return {"sections": out, "records": by_id, "columns": COLUMNS, "x_axes": X_AXES}


def write_page(summary: pd.DataFrame, records: list[ResultRecord], sections, out_dir: Path, title: str) -> Path:
    """Write ``out_dir/index.html`` (whole or not at all)."""
    data = json.dumps(page_data(summary, records, sections), separators=(",", ":")).replace("</", "<\\/")
    html = PAGE.substitute(title=title.replace("<", "&lt;"), chart_js=CHART_JS.read_text(), data=data, script=SCRIPT)
    path = Path(out_dir) / "index.html"
    write_whole(path, lambda p: p.write_text(html))
    return path


PAGE = Template("""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>$title</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:right;white-space:nowrap}
th{background:#f3f3f3;cursor:pointer;user-select:none} td:first-child,th:first-child{text-align:left}
tr.flag td:first-child::after{content:" (did not train)";color:#b00}
tr.sel{background:#fff3c4} .charts{display:flex;flex-wrap:wrap;gap:1em}
.chart{width:520px;height:340px} pre{background:#f7f7f7;padding:.5em;max-height:24em;overflow:auto}
</style>
<script>$chart_js</script>
</head><body>
<h1>$title</h1>
<p>Click a column to sort, type to filter, click a row for its runs. The view is kept in the address
(#sort=…&amp;dir=…&amp;filter=…). Numbers as in README.md beside this page.</p>
<input id="filter" placeholder="filter variants" size="40">
<div id="sections"></div>
<script id="data" type="application/json">$data</script>
<script>$script</script>
</body></html>
""")

SCRIPT = r"""
const D = JSON.parse(document.getElementById('data').textContent);
const hash = new URLSearchParams(location.hash.slice(1));
const state = {sort: hash.get('sort') || 'score', dir: hash.get('dir') || (hash.get('sort') ? 'asc' : 'desc'),
               filter: hash.get('filter') || ''};
const UNITS = {count: v => v >= 1e6 ? (v / 1e6).toFixed(2) + 'M' : v >= 1e3 ? (v / 1e3).toFixed(2) + 'k' : String(v),
  bytes: v => v >= 2 ** 30 ? (v / 2 ** 30).toFixed(2) + ' GiB' : v >= 2 ** 20 ? (v / 2 ** 20).toFixed(1) + ' MiB'
              : v >= 1024 ? (v / 1024).toFixed(1) + ' KiB' : v + ' B',
  s: v => v < 1 ? (v * 1000).toPrecision(3) + ' ms' : v.toPrecision(3) + ' s',
  pct: v => (v >= 1 ? String(+v.toPrecision(3)) : String(+v.toPrecision(2))) + '%', score: v => v.toFixed(3), text: v => String(v)};
const fmt = (kind, v) => v === null || v === undefined || v === '' ? '—' : UNITS[kind](v);
let drawn = 0;
function setHash() {
  const h = new URLSearchParams({sort: state.sort, dir: state.dir});
  if (state.filter) h.set('filter', state.filter);
  history.replaceState(null, '', '#' + h.toString());
}
function sorted(vs) {
  const key = state.sort === 'rank' ? 'rank_low' : state.sort, s = state.dir === 'asc' ? 1 : -1;
  return vs.slice().sort((a, b) => {
    const x = a[key], y = b[key];
    if (x === null || x === undefined) return 1; if (y === null || y === undefined) return -1;
    return (typeof x === 'string' ? x.localeCompare(y) : x - y) * s;
  });
}
function table(sec, box, detail) {
  const t = document.createElement('table'); t.className = 'variants';
  const cols = [['label', 'variant', 'text'], ['score', sec.metric + ' [95% CI]', 'score']].concat(
    D.columns.filter(c => c[0] !== 'label' && sec.variants.some(v => v[c[0]] !== null && v[c[0]] !== '')));
  const head = t.createTHead().insertRow();
  cols.forEach(([key, name]) => {
    const th = document.createElement('th'); th.textContent = name + (state.sort === key ? (state.dir === 'asc' ? ' ▲' : ' ▼') : '');
    th.dataset.key = key;
    th.onclick = () => { state.dir = state.sort === key && state.dir === 'asc' ? 'desc' : 'asc'; state.sort = key; render(); };
    head.appendChild(th);
  });
  const body = t.createTBody(), f = state.filter.toLowerCase();
  sorted(sec.variants).filter(v => !f || (v.label + ' ' + JSON.stringify(v.config)).toLowerCase().includes(f)).forEach(v => {
    const tr = body.insertRow(); tr.dataset.label = v.label; if (v.did_not_train) tr.className = 'flag';
    cols.forEach(([key, , kind]) => {
      const td = tr.insertCell();
      td.textContent = key === 'score' ? fmt('score', v.score) + (v.low !== null ? ` [${v.low.toFixed(3)}, ${v.high.toFixed(3)}]` : '')
                                       : fmt(kind, v[key]);
    });
    tr.onclick = () => { box.querySelectorAll('tr.sel').forEach(r => r.classList.remove('sel')); tr.classList.add('sel');
      detail.textContent = JSON.stringify({variant: v.label, config: v.config, did_not_train: v.did_not_train || undefined,
        runs: v.runs.map(id => D.records[id])}, null, 1); };
  });
  return t;
}
function pareto(sec, canvas, axis) {
  const pts = sec.variants.filter(v => v[axis] !== null && v.score !== null && v[axis] > 0);
  const kind = (D.columns.find(c => c[0] === axis) || [0, 0, 'count'])[2];
  return new Chart(canvas, {type: 'scatter', data: {datasets: [{label: sec.title, data: pts.map(v => ({x: v[axis], y: v.score, v})),
      pointBackgroundColor: pts.map(v => v.colour), pointBorderColor: pts.map(v => v.colour), pointRadius: 5}]},
    options: {animation: false, responsive: false, plugins: {legend: {display: false}, tooltip: {callbacks: {label: c => {
      const v = c.raw.v; return [v.label, sec.metric + ' ' + fmt('score', v.score), axis + ' ' + fmt(kind, v[axis]),
        JSON.stringify(v.config)]; }}}},
      scales: {x: {type: 'logarithmic', title: {display: true, text: axis + ' (log)'}},
               y: {title: {display: true, text: sec.metric + ' (test)'}}}}});
}
function curves(sec, canvas) {
  const ds = sec.variants.filter(v => v.val_curve.length).map(v => ({label: v.label, data: v.val_curve.map(p => ({x: p[0], y: p[1]})),
    showLine: true, pointRadius: 2, borderColor: v.colour, backgroundColor: v.colour}));
  return new Chart(canvas, {type: 'scatter', data: {datasets: ds}, options: {animation: false, responsive: false,
    scales: {x: {title: {display: true, text: 'step'}}, y: {title: {display: true, text: 'validation ' + sec.metric}}}}});
}
const charts = [];
function render() {
  setHash(); charts.splice(0).forEach(c => c.destroy()); drawn = 0;
  const root = document.getElementById('sections'); root.innerHTML = '';
  D.sections.forEach((sec, i) => {
    const box = document.createElement('section'); box.id = 'section-' + i;
    box.innerHTML = `<h2></h2><div class="tbl"></div><label>Pareto x axis: <select></select></label>
      <div class="charts"><canvas class="chart pareto" width="520" height="340"></canvas>
      <canvas class="chart curves" width="520" height="340"></canvas></div><pre class="detail">click a row</pre>`;
    box.querySelector('h2').textContent = sec.title;
    const detail = box.querySelector('.detail');
    box.querySelector('.tbl').appendChild(table(sec, box, detail));
    const sel = box.querySelector('select');
    D.x_axes.forEach(a => { const o = document.createElement('option'); o.value = o.textContent = a; sel.appendChild(o); });
    const canvas = box.querySelector('canvas.pareto');
    let chart = pareto(sec, canvas, sel.value);
    sel.onchange = () => { chart.destroy(); chart = pareto(sec, canvas, sel.value); };
    charts.push(chart, curves(sec, box.querySelector('canvas.curves')));
    root.appendChild(box);
  });
  charts.forEach(c => { drawn += c.data.datasets.reduce((n, d) => n + d.data.length, 0); });
  document.body.dataset.drawn = drawn;  // points drawn, for the page's own test
}
const input = document.getElementById('filter');
input.value = state.filter;
input.oninput = () => { state.filter = input.value; render(); };
render();
"""
