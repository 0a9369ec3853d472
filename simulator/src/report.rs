//! `--report FILE.html`: one self-contained page (inline CSS, JS and SVG;
//! no network) with the run's numbers, where the step's cycles go (a
//! stacked bar of the classes of op kinds, matmul, norm, attention, ...,
//! with the cycles that had nothing in flight, and a table per op kind:
//! crate::analysis, "Where time goes"), a timeline of one step (unit
//! tracks x cycles, slices colored by op kind), per-unit utilisation bars,
//! a per-layer breakdown, and a roofline-style chart of every op (the
//! cycles attributed to it against the machine's bound for its work,
//! log-log: on the diagonal an op runs at the bound).
//!
//! The script draws from a JSON blob embedded in the page and, when done,
//! writes `<div id="q35-drawn" data-wheretime=.. data-timeline=..
//! data-units=.. data-layers=.. data-roofline=..>` with the number of SVG
//! elements and table rows it drew in each chart (an error writes
//! `<div id="q35-error">` instead): the headless-browser test
//! (`tests/report_chromium.rs`) reads them back with `--dump-dom`.

use serde_json::{Value, json};

use crate::analysis::{Activity, StepProfile, unit_busy};
use crate::system::SystemRun;
use crate::trace::{TRACKS, slices};

/// The page for `step`, with `summary` (a JSON object of the run's numbers:
/// name -> value) shown as a table.
pub fn to_html(title: &str, step: &StepProfile, summary: &Value) -> String {
    page(title, step, summary, Value::Null)
}

/// Buckets across a system step in [`system_to_html`]'s chart: the
/// vectors received, and each chip's [`Activity`] at
/// [`system_bucket_width`].
const SYSTEM_BUCKETS: u64 = 400;

/// The cycles of a bucket of a system step of `cycles` in the report's
/// chart: the [`Activity`] width [`system_to_html`] wants.
pub fn system_bucket_width(cycles: u64) -> u64 {
    cycles.div_ceil(SYSTEM_BUCKETS).max(1)
}

/// The page of a system run (`q35sim profile SYSTEM.lpubin --report`):
/// first the system, a chart of every chip over the step (its unit-busy
/// cycles per bucket, colored by the busiest layer and shaded by how busy;
/// the vectors it received; an arrow per pair of chips from the first
/// vector's `send` to its arrival), every chip's unit utilisation over the
/// system's step as a table, every link that carried anything; then chip
/// `detail`'s own page (`detail_step`, its analysis with its events).
/// `activities[i]` is chip `i`'s [`Activity`] in buckets of
/// [`system_bucket_width`]; its units' figures are its run's counters.
pub fn system_to_html(
    title: &str,
    run: &SystemRun,
    activities: &[Activity],
    (detail, detail_step): (usize, &StepProfile),
    summary: &Value,
) -> String {
    let total = run.cycles.max(1);
    let chips: Vec<Value> = run
        .chips
        .iter()
        .zip(activities)
        .enumerate()
        .map(|(i, (c, act))| {
            let mut recv: std::collections::BTreeMap<u64, u64> = Default::default();
            let mut flows: std::collections::BTreeMap<u32, (u64, u64, u64)> = Default::default();
            for t in &c.received {
                *recv
                    .entry(t.arrival.min(total - 1) * SYSTEM_BUCKETS / total)
                    .or_default() += 1;
                let f = flows
                    .entry(t.from.chip)
                    .or_insert((t.from.cycle, t.arrival, 0));
                if t.from.cycle < f.0 {
                    (f.0, f.1) = (t.from.cycle, t.arrival);
                }
                f.2 += 1;
            }
            json!({
                "chip": i,
                "cycles": c.profile.total_cycles(),
                "instructions": c.profile.instructions(),
                "units": unit_busy(&c.profile).iter().map(|u| json!([u.name, u.busy, u.queues])).collect::<Vec<_>>(),
                "span": act.span,
                "links": c.links.iter().map(|l| json!([l.link, l.to.chip, l.to.link, l.sent, l.received, l.busy_cycles, l.waited_cycles])).collect::<Vec<_>>(),
                "recv": recv.into_iter().collect::<Vec<_>>(),
                "activity": act.buckets.iter().map(|&(b, busy, l)| json!([b * act.width, (b + 1) * act.width, busy, act.layers[l as usize]])).collect::<Vec<_>>(),
                "flows": flows.into_iter().map(|(from, (sent, arrival, n))| json!([from, sent, arrival, n])).collect::<Vec<_>>(),
            })
        })
        .collect();
    let system = json!({
        "total": run.cycles,
        "buckets": SYSTEM_BUCKETS,
        "detail": detail,
        "chips": chips,
    });
    page(title, detail_step, summary, system)
}

/// The page: the system's sections first when `system` is not null.
fn page(title: &str, step: &StepProfile, summary: &Value, system: Value) -> String {
    let data = json!({
        "system": system,
        "title": title,
        "summary": summary,
        "total": step.total_cycles,
        "tracks": TRACKS.iter().map(|(_, n)| n).collect::<Vec<_>>(),
        "labels": step.labels,
        "kinds": step.labels.iter().map(|l| crate::analysis::kind_of(l)).collect::<Vec<_>>(),
        "slices": slices(step).iter().map(|(t, l, a, b)| json!([t - 1, l, a, b])).collect::<Vec<_>>(),
        "units": step.units.iter().map(|u| json!([u.name, u.fraction, u.busy])).collect::<Vec<_>>(),
        "layers": step.layers.iter().map(|l| json!([l.name, l.first, l.last, l.busy, l.ops, l.cycles])).collect::<Vec<_>>(),
        "ops": step.ops.iter().map(|o| json!([o.label, o.kind, o.cycles, o.bound_cycles, o.bound_by, o.busy_total(), o.span()])).collect::<Vec<_>>(),
        "classes": step.classes.iter().map(|g| json!([g.name, g.cycles, g.busy, g.ops, g.bound_cycles, g.bound_by])).collect::<Vec<_>>(),
        "opkinds": step.kinds.iter().map(|g| json!([g.name, g.class, g.cycles, g.busy, g.ops, g.bound_cycles, g.bound_by])).collect::<Vec<_>>(),
        "rest": [[crate::analysis::NOTHING_IN_FLIGHT, step.idle_cycles], [crate::analysis::SKEW, step.skew_cycles]],
        "bound": [step.bound_cycles, step.bound_by],
    });
    // `</` cannot end the script early once escaped.
    let blob = data.to_string().replace("</", "<\\/");
    format!(
        r##"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body{{font:13px system-ui,sans-serif;margin:16px;color:#222}}
h1{{font-size:18px}} h2{{font-size:15px;margin-top:22px}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}} td{{white-space:nowrap}}
td:first-child,th:first-child{{text-align:left}}
svg{{border:1px solid #ddd;background:#fff}} .lg span{{display:inline-block;margin-right:10px}}
.sw{{display:inline-block;width:10px;height:10px;margin-right:3px}}
</style></head><body>
<h1>{title}</h1>
<h2>Numbers</h2><table id="summary"></table>
<div id="sys" style="display:none">
<h2>The system over one step (a row per chip: its unit-busy cycles over time, colored by the layer busiest there and darker where busier; ticks where it received vectors; arrows from a chip's first vector sent to another to its arrival)</h2><div id="gantt"></div>
<h2>Chips: unit utilisation over the system's step (busy cycles / (queues x the step's cycles))</h2><table id="chiptable"></table>
<h2>Links that carried anything (busy: cycles the outbound direction carried vectors; waited: cycles received vectors waited to be taken)</h2><table id="linktable"></table>
<h2 id="detailhead"></h2>
</div>
<h2>Where the step's cycles go (each cycle split equally among the ops in flight on it)</h2><div id="wheretime"></div><table id="kindtable"></table>
<h2>Timeline of one step (units x cycles, colored by op kind)</h2><div id="timeline"></div><div class="lg" id="legend"></div>
<h2>Unit utilisation</h2><div id="units"></div>
<h2>Layers (cycles attributed to their ops)</h2><div id="layers"></div><table id="layertable"></table>
<h2>Ops against the machine's bound (cycles attributed to the op against the bound for its work, log-log; on the diagonal = at the bound)</h2><div id="roofline"></div>
<script id="q35-data" type="application/json">{blob}</script>
<script>
"use strict";
window.onerror = function (m) {{
  var d = document.createElement("div"); d.id = "q35-error"; d.textContent = String(m); document.body.appendChild(d);
}};
(function () {{
  var D = JSON.parse(document.getElementById("q35-data").textContent);
  var NS = "http://www.w3.org/2000/svg";
  function el(p, name, attrs, text) {{
    var e = document.createElementNS(NS, name);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    p.appendChild(e); return e;
  }}
  function svg(id, w, h) {{ return el(document.getElementById(id), "svg", {{width: w, height: h, viewBox: "0 0 " + w + " " + h}}); }}
  function fmt(x) {{ return typeof x === "number" && !Number.isInteger(x) ? x.toFixed(3) : String(x); }}
  var palette = ["#4e79a7","#f28e2b","#e15759","#76b7b2","#59a14f","#edc948","#b07aa1","#ff9da7","#9c755f","#bab0ac","#1f77b4","#2ca02c","#d62728","#9467bd","#8c564b","#17becf"];
  var kindColor = {{}}, kinds = [];
  D.kinds.forEach(function (k) {{ if (!(k in kindColor)) {{ kindColor[k] = palette[kinds.length % palette.length]; kinds.push(k); }} }});
  var count = {{wheretime: 0, timeline: 0, units: 0, layers: 0, roofline: 0}};
  if (D.system) {{ drawSystem(D.system); }}
  function head(t, cols) {{ var r = t.insertRow(); cols.forEach(function (h) {{ var th = document.createElement("th"); th.textContent = h; r.appendChild(th); }}); }}
  function pct(x) {{ return (100 * x).toFixed(1) + "%"; }}
  // The system: a chart of the chips over the step, their utilisation and links.
  function drawSystem(S) {{
    document.getElementById("sys").style.display = "";
    count.gantt = 0; count.chips = 0; count.links = 0;
    var n = S.chips.length, T = Math.max(S.total, 1);
    var rowH = Math.max(3, Math.min(18, Math.floor(900 / n))), W = 1100, left = 70, right = 10;
    var X = function (c) {{ return left + (W - left - right) * c / T; }};
    var g = svg("gantt", W, rowH * n + 30);
    var layerColor = {{}}, nl = 0, maxBusy = 1;
    S.chips.forEach(function (c) {{ c.activity.forEach(function (a) {{ maxBusy = Math.max(maxBusy, a[2]); }}); }});
    var every = Math.max(1, Math.ceil(12 / rowH));
    S.chips.forEach(function (c, i) {{
      var y = i * rowH;
      if (i % every === 0) el(g, "text", {{x: 4, y: y + Math.min(rowH, 12), "font-size": Math.min(11, Math.max(rowH, 8))}}, "chip " + c.chip);
      el(g, "rect", {{x: left, y: y + 0.5, width: W - left - right, height: Math.max(rowH - 1, 1), fill: i % 2 ? "#fafafa" : "#f0f0f0"}});
      c.activity.forEach(function (a) {{
        if (!(a[3] in layerColor)) {{ layerColor[a[3]] = palette[nl++ % palette.length]; }}
        var r = el(g, "rect", {{x: X(a[0]), y: y + 1, width: Math.max(X(Math.min(a[1], T)) - X(a[0]), 0.5), height: Math.max(rowH - 2, 1), fill: layerColor[a[3]], "fill-opacity": (0.25 + 0.75 * a[2] / maxBusy).toFixed(3)}});
        el(r, "title", {{}}, "chip " + c.chip + ", cycles " + a[0] + ".." + a[1] + ": " + a[2] + " unit-busy cycles, most of them " + a[3]);
        count.gantt++;
      }});
      c.recv.forEach(function (b) {{
        var x = left + (W - left - right) * b[0] / S.buckets;
        var r = el(g, "rect", {{x: x, y: y + rowH - Math.max(rowH / 3, 1), width: Math.max((W - left - right) / S.buckets, 1), height: Math.max(rowH / 3, 1), fill: "#222"}});
        el(r, "title", {{}}, "chip " + c.chip + ": " + b[1] + " vectors received");
        count.gantt++;
      }});
    }});
    S.chips.forEach(function (c, i) {{
      c.flows.forEach(function (f) {{
        var l = el(g, "line", {{x1: X(f[1]), y1: f[0] * rowH + rowH / 2, x2: X(f[2]), y2: i * rowH + rowH / 2, stroke: "#d62728", "stroke-width": 1}});
        el(l, "title", {{}}, "chip " + f[0] + " -> chip " + c.chip + ": " + f[3] + " vectors, the first sent on " + f[1] + ", arrived " + f[2]);
        count.gantt++;
      }});
    }});
    for (var k = 0; k <= 10; k++) el(g, "text", {{x: X(T * k / 10), y: rowH * n + 20, "font-size": 10}}, Math.round(T * k / 10));
    // utilisation table: one column per unit group, shaded by its fraction
    // Each chip's busiest MEM slice differs: one column, the slice named.
    var BUSIEST = "MEM busiest: ", names = [];
    var col = function (u) {{ return u[0].indexOf(BUSIEST) === 0 ? "MEM busiest slice" : u[0]; }};
    S.chips.forEach(function (c) {{ c.units.forEach(function (u) {{ if (names.indexOf(col(u)) < 0) names.push(col(u)); }}); }});
    var ct = document.getElementById("chiptable");
    head(ct, ["chip", "its cycles", "instructions", "first busy cycle", "last busy cycle"].concat(names).concat(["links busy", "links waited"]));
    S.chips.forEach(function (c) {{
      var r = ct.insertRow();
      [c.chip, c.cycles, c.instructions, c.span ? c.span[0] : "-", c.span ? c.span[1] : "-"].forEach(function (v) {{ r.insertCell().textContent = v; }});
      names.forEach(function (nm) {{
        var u = c.units.filter(function (x) {{ return col(x) === nm; }})[0];
        var f = u ? u[1] / (Math.max(u[2], 1) * T) : 0, cell = r.insertCell();
        cell.textContent = u ? pct(f) + (u[0] === nm ? "" : " " + u[0].slice(BUSIEST.length)) : "-";
        cell.style.background = "rgba(78,121,167," + Math.min(f * 2, 1).toFixed(3) + ")";
      }});
      var busy = 0, waited = 0;
      c.links.forEach(function (l) {{ busy += l[5]; waited += l[6]; }});
      var lc = r.insertCell(); lc.textContent = c.links.length ? pct(busy / (c.links.length * T)) : "-";
      r.insertCell().textContent = waited;
      count.chips++;
    }});
    var lt = document.getElementById("linktable");
    head(lt, ["chip", "link", "to chip", "its link", "vectors sent", "received", "busy (cycles)", "busy (share of the step)", "waited (cycles)"]);
    S.chips.forEach(function (c) {{
      c.links.forEach(function (l) {{
        var r = lt.insertRow();
        [c.chip, l[0], l[1], l[2], l[3], l[4], l[5], pct(l[5] / T), l[6]].forEach(function (v) {{ r.insertCell().textContent = v; }});
        count.links++;
      }});
    }});
    document.getElementById("detailhead").textContent = "Chip " + S.detail + " in detail (the sections below)";
  }}
  // numbers
  var st = document.getElementById("summary");
  Object.keys(D.summary).forEach(function (k) {{ var r = st.insertRow(); r.insertCell().textContent = k; r.insertCell().textContent = fmt(D.summary[k]); }});
  // where time goes: one stacked bar of the classes (and the cycles with
  // nothing in flight, and the skew), then the op kinds as a table
  var classColor = {{}}, pal2 = ["#4e79a7","#f28e2b","#e15759","#76b7b2","#59a14f","#edc948","#b07aa1","#ff9da7","#9c755f","#bab0ac","#1f77b4","#2ca02c"];
  var parts = D.classes.map(function (c, i) {{ classColor[c[0]] = pal2[i % pal2.length]; return [c[0], c[1]]; }})
    .concat(D.rest.map(function (r) {{ classColor[r[0]] = "#dddddd"; return [r[0], r[1]]; }}));
  var WT = Math.max(D.total, 1), ww = 1000;
  var wt = svg("wheretime", ww + 20, 60 + 18 * Math.ceil(parts.length / 3));
  var x0 = 10;
  parts.forEach(function (p, i) {{
    var w = ww * p[1] / WT;
    if (w > 0) {{
      var r = el(wt, "rect", {{x: x0, y: 8, width: Math.max(w, 0.5), height: 26, fill: classColor[p[0]], stroke: "#fff"}});
      el(r, "title", {{}}, p[0] + ": " + Math.round(p[1]) + " cycles, " + (100 * p[1] / WT).toFixed(1) + "%");
      count.wheretime++;
    }}
    x0 += w;
    var lx = 10 + 340 * (i % 3), ly = 52 + 18 * Math.floor(i / 3);
    el(wt, "rect", {{x: lx, y: ly - 10, width: 10, height: 10, fill: classColor[p[0]]}});
    el(wt, "text", {{x: lx + 14, y: ly, "font-size": 11}}, p[0] + " " + (100 * p[1] / WT).toFixed(1) + "%");
  }});
  var kt = document.getElementById("kindtable");
  var kh = kt.insertRow(); ["op kind (all layers)","class","cycles","share","busy (unit cycles)","ops","bound (cycles)","bound by","% of bound"].forEach(function (h) {{ var th = document.createElement("th"); th.textContent = h; kh.appendChild(th); }});
  D.opkinds.forEach(function (k) {{
    var r = kt.insertRow();
    [k[0], k[1], Math.round(k[2]), (100 * k[2] / WT).toFixed(1) + "%", k[3], k[4], k[5].toFixed(1), k[6], k[2] > 0 ? (100 * k[5] / k[2]).toFixed(1) + "%" : "-"].forEach(function (v) {{ r.insertCell().textContent = v; }});
    count.wheretime++;
  }});
  // timeline
  var W = 1100, left = 90, rowH = 22, T = Math.max(D.total, 1);
  var s = svg("timeline", W, rowH * D.tracks.length + 30);
  D.tracks.forEach(function (n, i) {{ el(s, "text", {{x: 4, y: i * rowH + 15}}, n); }});
  D.slices.forEach(function (sl) {{
    var x = left + (W - left - 10) * sl[2] / T, w = Math.max((W - left - 10) * (sl[3] - sl[2]) / T, 0.5);
    var r = el(s, "rect", {{x: x, y: sl[0] * rowH + 3, width: w, height: rowH - 6, fill: kindColor[D.kinds[sl[1]]]}});
    el(r, "title", {{}}, D.labels[sl[1]] + ": cycles " + sl[2] + ".." + sl[3]);
    count.timeline++;
  }});
  for (var c = 0; c <= 10; c++) el(s, "text", {{x: left + (W - left - 10) * c / 10, y: rowH * D.tracks.length + 20, "font-size": 10}}, Math.round(T * c / 10));
  var lg = document.getElementById("legend");
  kinds.forEach(function (k) {{ var sp = document.createElement("span"); sp.innerHTML = '<i class="sw" style="background:' + kindColor[k] + '"></i>'; sp.appendChild(document.createTextNode(k)); lg.appendChild(sp); }});
  // units
  var u = svg("units", 700, D.units.length * 22 + 10);
  D.units.forEach(function (x, i) {{
    el(u, "text", {{x: 4, y: i * 22 + 15}}, x[0]);
    el(u, "rect", {{x: 200, y: i * 22 + 4, width: 400, height: 14, fill: "#eee"}});
    el(u, "rect", {{x: 200, y: i * 22 + 4, width: 400 * Math.min(x[1], 1), height: 14, fill: "#4e79a7"}});
    el(u, "text", {{x: 610, y: i * 22 + 15}}, (100 * x[1]).toFixed(1) + "%");
    count.units++;
  }});
  // layers: attributed cycles as bars, the span in the table
  var maxCyc = Math.max.apply(null, D.layers.map(function (l) {{ return l[5]; }}).concat([1]));
  var ls = svg("layers", 700, D.layers.length * 20 + 10);
  var lt = document.getElementById("layertable");
  var hr = lt.insertRow(); ["layer","cycles (attributed)","share","first cycle","last cycle","span","busy (unit cycles)","ops"].forEach(function (h) {{ var th = document.createElement("th"); th.textContent = h; hr.appendChild(th); }});
  D.layers.forEach(function (l, i) {{
    el(ls, "text", {{x: 4, y: i * 20 + 14}}, l[0]);
    var b = el(ls, "rect", {{x: 160, y: i * 20 + 4, width: Math.max(480 * l[5] / maxCyc, 0.5), height: 12, fill: "#59a14f"}});
    el(b, "title", {{}}, l[0] + ": " + Math.round(l[5]) + " cycles");
    var r = lt.insertRow(); [l[0], Math.round(l[5]), (100 * l[5] / WT).toFixed(1) + "%", l[1], l[2], l[2] - l[1], l[3], l[4]].forEach(function (v) {{ r.insertCell().textContent = v; }});
    count.layers++;
  }});
  // roofline-style: x = bound cycles, y = attributed cycles (log-log)
  var R = 460, pad = 50, ops = D.ops.filter(function (o) {{ return o[2] > 0; }});
  var lo = 1, hi = 10;
  ops.forEach(function (o) {{ hi = Math.max(hi, o[2], o[3]); }});
  var L = function (v) {{ return Math.log10(Math.max(v, lo)) / Math.log10(hi * 1.2); }};
  var rf = svg("roofline", R + pad + 220, R + pad);
  el(rf, "line", {{x1: pad, y1: R, x2: R + pad, y2: 0, stroke: "#999", "stroke-dasharray": "4 3"}});
  el(rf, "line", {{x1: pad, y1: R, x2: R + pad, y2: R, stroke: "#000"}});
  el(rf, "line", {{x1: pad, y1: R, x2: pad, y2: 0, stroke: "#000"}});
  el(rf, "text", {{x: pad + 120, y: R + 35}}, "bound cycles (machine peak for the op's work)");
  el(rf, "text", {{x: 2, y: 12}}, "cycles (attributed)");
  ops.forEach(function (o) {{
    var c = el(rf, "circle", {{cx: pad + R * L(o[3]), cy: R - R * L(o[2]), r: 4, fill: kindColor[o[1]], "fill-opacity": 0.8}});
    el(c, "title", {{}}, o[0] + ": " + Math.round(o[2]) + " cycles (span " + o[6] + "), bound " + o[3].toFixed(1) + " (" + o[4] + ")");
    count.roofline++;
  }});
  var m = document.createElement("div"); m.id = "q35-drawn";
  Object.keys(count).forEach(function (k) {{ m.setAttribute("data-" + k, count[k]); }});
  m.textContent = "drawn: " + JSON.stringify(count);
  document.body.appendChild(m);
}})();
</script></body></html>
"##
    )
}
