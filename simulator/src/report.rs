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

use crate::analysis::StepProfile;
use crate::trace::{TRACKS, slices};

/// The page for `step`, with `summary` (a JSON object of the run's numbers:
/// name -> value) shown as a table.
pub fn to_html(title: &str, step: &StepProfile, summary: &Value) -> String {
    let data = json!({
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
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}
svg{{border:1px solid #ddd;background:#fff}} .lg span{{display:inline-block;margin-right:10px}}
.sw{{display:inline-block;width:10px;height:10px;margin-right:3px}}
</style></head><body>
<h1>{title}</h1>
<h2>Numbers</h2><table id="summary"></table>
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
