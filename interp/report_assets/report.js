// interp attention report: draws the page from the JSON block #report-data.
// Token text is data: it only ever reaches the page through textContent, SVG/canvas
// text or attribute values, never through innerHTML, so a token that looks like markup shows as text.
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("report-data").textContent);
  var TOKENS = DATA.tokens;
  var P = TOKENS.length;
  var SCALE = DATA.scale;
  var SVGNS = "http://www.w3.org/2000/svg";
  var ROW = 18; // px per token row in the line view; matches --row in the CSS
  // viridis, 9 stops (matplotlib's), interpolated linearly
  var VIRIDIS = [[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
    [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]];
  var MASKED = [228, 230, 234];

  function color(v) {
    if (!(v >= 0)) v = 0;
    if (v > 1) v = 1;
    var x = v * (VIRIDIS.length - 1), i = Math.min(Math.floor(x), VIRIDIS.length - 2), f = x - i;
    var a = VIRIDIS[i], b = VIRIDIS[i + 1];
    return [a[0] + f * (b[0] - a[0]), a[1] + f * (b[1] - a[1]), a[2] + f * (b[2] - a[2])];
  }
  function css(rgb) { return "rgb(" + Math.round(rgb[0]) + "," + Math.round(rgb[1]) + "," + Math.round(rgb[2]) + ")"; }

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function fmt(w) { return w.toFixed(3); }
  function drawn(n) { return n + (n === 1 ? " line" : " lines") + " drawn"; }
  function headName(h) { return "L" + h.layer + "H" + h.head; }

  // The lower triangle of a head's pattern, row by row, as uint16 (weight × SCALE), base64.
  function decode(b64) {
    var bin = atob(b64), n = bin.length / 2, out = new Float32Array(n);
    for (var i = 0; i < n; i++) out[i] = (bin.charCodeAt(2 * i) | (bin.charCodeAt(2 * i + 1) << 8)) / SCALE;
    return out;
  }
  function rowStart(q) { return q * (q + 1) / 2; }

  // ---------------------------------------------------------------- header and tokens
  function renderHeader() {
    document.getElementById("title").textContent = DATA.title;
    document.getElementById("meta").textContent = DATA.meta;
    var notes = document.getElementById("notes");
    DATA.notes.forEach(function (n) { notes.appendChild(el("div", "note", n)); });
    var box = document.getElementById("tokens");
    TOKENS.forEach(function (t, i) {
      var s = el("span", "tok");
      s.appendChild(el("span", "idx", i));
      s.appendChild(document.createTextNode(t));
      s.title = "position " + i;
      box.appendChild(s);
    });
    document.getElementById("n-tokens").textContent = P + " tokens";
  }

  // ---------------------------------------------------------------- summary: layers × heads per kind
  function renderSummary() {
    var S = DATA.summary, root = document.getElementById("summary");
    var status = document.getElementById("summary-status");
    if (!S) { root.appendChild(el("div", "note", "No head scores (the head classifier was not run).")); return; }
    var chosen = {};
    DATA.heads.forEach(function (h, i) { chosen[h.layer + "." + h.head] = i; });
    var px = Math.max(12, Math.min(26, Math.floor(220 / Math.max(S.n_layers, S.n_heads)))) + "px";
    function sized(td) { td.style.width = px; td.style.height = px; return td; }
    S.kinds.forEach(function (kind) {
      var grid = S.scores[kind], block = el("div", "grid-block");
      block.appendChild(el("div", "name", kind));
      var table = headGrid(S, "grid", status, function (l, hh) {
        var v = grid[l][hh], td = sized(el("td", "cell"));
        td.style.background = v === null ? css(MASKED) : css(color((v - S.vmin) / (S.vmax - S.vmin)));
        td.dataset.layer = l; td.dataset.head = hh;
        var key = l + "." + hh;
        if (key in chosen) {
          td.classList.add("chosen");
          td.addEventListener("click", (function (i) {
            return function () { document.getElementById("head-" + i).scrollIntoView({ behavior: "smooth" }); };
          })(chosen[key]));
        }
        return [td, "L" + l + "H" + hh + "  " + kind + " " + (v === null ? "n/a" : fmt(v)) + "  label: " + S.labels[l][hh]];
      });
      block.appendChild(table);
      root.appendChild(block);
    });
    root.appendChild(labelGrid(S, chosen, sized, status));
  }

  // A layers × heads table with axis labels; cell(l, h) returns [td, hover text].
  function headGrid(S, cls, status, cell) {
    var table = el("table", cls), head = el("tr");
    head.appendChild(el("td", "ax", ""));
    for (var h = 0; h < S.n_heads; h++) head.appendChild(el("td", "ax", h));
    table.appendChild(head);
    for (var l = 0; l < S.n_layers; l++) {
      var tr = el("tr");
      tr.appendChild(el("td", "ax", l));
      for (var hh = 0; hh < S.n_heads; hh++) {
        var made = cell(l, hh), td = made[0];
        td.title = made[1];
        td.addEventListener("mouseenter", (function (t) { return function () { status.textContent = t; }; })(made[1]));
        tr.appendChild(td);
      }
      table.appendChild(tr);
    }
    return table;
  }

  // One more grid: each head's label as a letter on the kind's colour.
  var KIND_COLORS = ["#2f5fb3", "#e8590c", "#2b8a3e", "#c2255c", "#7048e8", "#8a919c"];
  function abbreviations(kinds) { // first letter, or the first two where that is taken
    var seen = {}, out = {};
    kinds.forEach(function (k) {
      var a = k.charAt(0).toUpperCase();
      if (a in seen) a = a + k.charAt(1);
      seen[a] = 1; out[k] = a;
    });
    return out;
  }
  function labelGrid(S, chosen, sized, status) {
    var ab = abbreviations(S.kinds);
    var block = el("div", "grid-block");
    block.appendChild(el("div", "name", "label"));
    var table = headGrid(S, "grid labels", status, function (l, hh) {
      var lab = S.labels[l][hh], i = S.kinds.indexOf(lab);
      var td = sized(el("td", "cell", i >= 0 ? ab[lab] : "·"));
      td.style.background = i >= 0 ? KIND_COLORS[i % KIND_COLORS.length] : "#eef0f3";
      if ((l + "." + hh) in chosen) td.classList.add("chosen");
      return [td, "L" + l + "H" + hh + "  label: " + lab];
    });
    block.appendChild(table);
    var keys = el("div", "legend");
    S.kinds.forEach(function (k, i) {
      var m = el("span", ""), sw = el("span", "swatch");
      sw.style.background = KIND_COLORS[i % KIND_COLORS.length];
      m.appendChild(sw); m.appendChild(document.createTextNode(ab[k] + " " + k));
      keys.appendChild(m);
    });
    block.appendChild(keys);
    return block;
  }

  // ---------------------------------------------------------------- one head
  function renderHead(h, index) {
    var W = decode(h.pattern);
    var card = el("section", "head-card");
    card.id = "head-" + index;
    card.dataset.layer = h.layer; card.dataset.head = h.head;
    card.appendChild(el("h3", "", headName(h)));
    card.appendChild(el("span", "label" + (h.label && h.label !== "none" ? "" : " none"), h.label || "no scores"));
    card.appendChild(el("div", "reason", h.reason));
    if (h.scores) card.appendChild(scoresTable(h));
    var views = el("div", "views");
    var status = el("div", "status", "");
    var lines = lineView(h, W, status);
    views.appendChild(heatmap(h, W, status, lines));
    views.appendChild(lines.root);
    card.appendChild(views);
    card.appendChild(status);
    return card;
  }

  function scoresTable(h) {
    var t = el("table", "scores"), r1 = el("tr"), r2 = el("tr"), r3 = el("tr");
    r1.appendChild(el("th", "", "score"));
    r2.appendChild(el("th", "", headName(h)));
    r3.appendChild(el("th", "", "positions"));
    DATA.kinds.forEach(function (k) {
      r1.appendChild(el("th", "", k));
      var v = h.scores[k];
      r2.appendChild(el("td", k === h.label ? "own" : "", v === null ? "n/a" : fmt(v)));
      var n = h.counts ? h.counts[k] : null;
      r3.appendChild(el("td", "", n === null || n === undefined ? "" : n));
    });
    t.appendChild(r1); t.appendChild(r2);
    if (h.counts) t.appendChild(r3);
    return t;
  }

  // Heatmap: one pixel per (query, key) drawn into an offscreen canvas, then scaled up
  // without smoothing; the masked upper triangle is grey (hatched when cells are large).
  function heatmap(h, W, status, lines) {
    var cell = Math.max(1, Math.min(28, Math.floor(DATA.heatmap_px / P)));
    var labels = P <= DATA.label_max_tokens, margin = 28, FONT = "10px ui-monospace, monospace";
    if (labels) { // room for the longest (shortened) token label
      var m = document.createElement("canvas").getContext("2d");
      m.font = FONT;
      TOKENS.forEach(function (t) { margin = Math.max(margin, 10 + m.measureText(shortLabel(t)).width); });
      margin = Math.ceil(Math.min(margin, 120));
    }
    var size = cell * P;
    var wrap = el("div", "view");
    wrap.appendChild(el("div", "view-title", "pattern: query (rows) × key (columns)"));
    var canvas = el("canvas", "heatmap");
    canvas.width = margin + size + 4; canvas.height = margin + size + 4;
    var ctx = canvas.getContext("2d");
    var off = document.createElement("canvas");
    off.width = P; off.height = P;
    var octx = off.getContext("2d"), img = octx.createImageData(P, P);
    for (var q = 0; q < P; q++) {
      var base = rowStart(q);
      for (var k = 0; k < P; k++) {
        var c = k <= q ? color(W[base + k]) : MASKED, o = 4 * (q * P + k);
        img.data[o] = c[0]; img.data[o + 1] = c[1]; img.data[o + 2] = c[2]; img.data[o + 3] = 255;
      }
    }
    octx.putImageData(img, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.drawImage(off, margin, margin, size, size);
    if (cell >= 6) { // hatch the masked (future) cells
      ctx.save();
      ctx.beginPath();
      ctx.moveTo(margin + cell, margin);
      for (var r = 0; r < P - 1; r++) { // down the staircase just above the diagonal
        ctx.lineTo(margin + (r + 1) * cell, margin + (r + 1) * cell);
        ctx.lineTo(margin + (r + 2) * cell, margin + (r + 1) * cell);
      }
      ctx.lineTo(margin + size, margin);
      ctx.closePath();
      ctx.clip();
      ctx.strokeStyle = "rgba(120,125,135,0.55)"; ctx.lineWidth = 1;
      for (var d = -size; d < size; d += 6) {
        ctx.beginPath(); ctx.moveTo(margin + d, margin); ctx.lineTo(margin + d + size, margin + size); ctx.stroke();
      }
      ctx.restore();
    }
    ctx.fillStyle = "#5d6675"; ctx.font = FONT;
    if (labels) {
      for (var i = 0; i < P; i++) {
        var t = shortLabel(TOKENS[i]);
        ctx.textAlign = "right"; ctx.textBaseline = "middle";
        ctx.fillText(t, margin - 4, margin + (i + 0.5) * cell);
        ctx.save(); ctx.translate(margin + (i + 0.5) * cell, margin - 4); ctx.rotate(-Math.PI / 2);
        ctx.textAlign = "left"; ctx.fillText(t, 0, 0); ctx.restore();
      }
    } else {
      ctx.textAlign = "left"; ctx.textBaseline = "bottom";
      ctx.fillText("key →", margin, margin - 4);
      ctx.textBaseline = "top"; // rotated a quarter turn clockwise, "top" puts the glyphs left of the heatmap
      ctx.save(); ctx.translate(margin - 4, margin); ctx.rotate(Math.PI / 2);
      ctx.fillText("query →", 0, 0); ctx.restore();
    }
    canvas.addEventListener("mousemove", function (ev) {
      var rect = canvas.getBoundingClientRect();
      var x = (ev.clientX - rect.left) * canvas.width / rect.width - margin;
      var y = (ev.clientY - rect.top) * canvas.height / rect.height - margin;
      var qq = Math.floor(y / cell), kk = Math.floor(x / cell);
      if (qq < 0 || kk < 0 || qq >= P || kk >= P) { status.textContent = ""; lines.clear(); return; }
      var w = kk <= qq ? fmt(W[rowStart(qq) + kk]) : "masked (future key)";
      status.textContent = "query " + qq + " " + JSON.stringify(TOKENS[qq]) +
        " → key " + kk + " " + JSON.stringify(TOKENS[kk]) + ": " + w;
      lines.focusQuery(qq);
    });
    canvas.addEventListener("mouseleave", function () { status.textContent = ""; lines.clear(); });
    wrap.appendChild(canvas);
    wrap.appendChild(legend());
    return wrap;
  }

  function shortLabel(t) { return t.length > 14 ? t.slice(0, 13) + "…" : t; }

  function legend() {
    var box = el("div", "legend");
    var bar = el("canvas");
    bar.width = 120; bar.height = 10;
    var ctx = bar.getContext("2d");
    for (var x = 0; x < 120; x++) { ctx.fillStyle = css(color(x / 119)); ctx.fillRect(x, 0, 1, 10); }
    box.appendChild(el("span", "", "0"));
    box.appendChild(bar);
    box.appendChild(el("span", "", "1"));
    var m = el("span", ""), sw = el("span", "swatch masked");
    m.appendChild(sw); m.appendChild(document.createTextNode("masked (future)"));
    box.appendChild(m);
    return box;
  }

  // Two columns of tokens joined by lines: queries left, keys right, stroke opacity = weight.
  // Per query only the strongest keys get a line (DATA.line_top_k, weight ≥ DATA.line_min_weight),
  // so the DOM grows as P·k, not P²; hovering still shows every weight.
  function lineView(h, W, status) {
    var gap = 150, height = P * ROW;
    var scroll = el("div", "view");
    scroll.appendChild(el("div", "view-title", "query → key (line opacity = weight; hover a token)"));
    var box = el("div", "lines-scroll"), root = el("div", "lineview");
    var qcol = el("div", "col q"), kcol = el("div", "col k");
    var svg = document.createElementNS(SVGNS, "svg");
    svg.setAttribute("width", gap); svg.setAttribute("height", height);
    var byQ = [], byK = [], qRows = [], kRows = [], qW = [], kW = [];
    for (var i = 0; i < P; i++) {
      byQ.push([]); byK.push([]);
      var qr = el("div", "row"), kr = el("div", "row"), qw = el("span", "w", ""), kw = el("span", "w", "");
      qr.appendChild(qw); qr.appendChild(el("span", "tok", TOKENS[i]));
      kr.appendChild(el("span", "tok", TOKENS[i])); kr.appendChild(kw);
      qr.dataset.pos = i; kr.dataset.pos = i;
      qr.title = "query " + i; kr.title = "key " + i;
      qcol.appendChild(qr); kcol.appendChild(kr);
      qRows.push(qr); kRows.push(kr); qW.push(qw); kW.push(kw);
    }
    var topk = DATA.line_top_k, minw = DATA.line_min_weight;
    for (var q = 0; q < P; q++) {
      var base = rowStart(q), keys = [];
      for (var k = 0; k <= q; k++) if (W[base + k] >= minw) keys.push(k);
      keys.sort(function (a, b) { return W[base + b] - W[base + a]; });
      keys.slice(0, topk).forEach(function (k) {
        var line = document.createElementNS(SVGNS, "line");
        line.setAttribute("x1", 0); line.setAttribute("y1", (q + 0.5) * ROW);
        line.setAttribute("x2", gap); line.setAttribute("y2", (k + 0.5) * ROW);
        line.setAttribute("stroke-opacity", Math.max(0.02, W[base + k]).toFixed(3));
        line.dataset.q = q; line.dataset.k = k; line.dataset.w = W[base + k];
        svg.appendChild(line);
        byQ[q].push(line); byK[k].push(line);
      });
    }
    var active = [];
    function clear() {
      root.classList.remove("focus");
      active.forEach(function (e) { e.classList.remove("hl"); e.classList.remove("active"); e.style.strokeOpacity = ""; });
      active = [];
      for (var i = 0; i < P; i++) { qW[i].textContent = ""; kW[i].textContent = ""; }
    }
    function mark(e) {
      if (e.tagName === "line") {
        e.classList.add("hl");
        e.style.strokeOpacity = 0.3 + 0.7 * Number(e.dataset.w); // weak lines stay visible while highlighted
      } else e.classList.add("active");
      active.push(e);
    }
    function focusQuery(q) {
      clear();
      root.classList.add("focus");
      mark(qRows[q]);
      byQ[q].forEach(mark);
      var base = rowStart(q);
      for (var k = 0; k <= q; k++) kW[k].textContent = fmt(W[base + k]);
    }
    function focusKey(k) {
      clear();
      root.classList.add("focus");
      mark(kRows[k]);
      byK[k].forEach(mark);
      for (var q = k; q < P; q++) qW[q].textContent = fmt(W[rowStart(q) + k]);
    }
    qRows.forEach(function (r, i) {
      r.addEventListener("mouseenter", function () {
        focusQuery(i);
        status.textContent = "query " + i + " " + JSON.stringify(TOKENS[i]) + ": weights on the right; " + drawn(byQ[i].length);
      });
    });
    kRows.forEach(function (r, i) {
      r.addEventListener("mouseenter", function () {
        focusKey(i);
        status.textContent = "key " + i + " " + JSON.stringify(TOKENS[i]) + ": weights of each query on the left; " + drawn(byK[i].length);
      });
    });
    root.addEventListener("mouseleave", function () { clear(); status.textContent = ""; });
    root.appendChild(qcol); root.appendChild(svg); root.appendChild(kcol);
    box.appendChild(root);
    scroll.appendChild(box);
    return { root: scroll, focusQuery: focusQuery, clear: clear };
  }

  // ---------------------------------------------------------------- go
  var t0 = performance.now();
  renderHeader();
  renderSummary();
  var heads = document.getElementById("heads");
  DATA.heads.forEach(function (h, i) { heads.appendChild(renderHead(h, i)); });
  document.body.dataset.renderMs = Math.round(performance.now() - t0);
  document.body.dataset.ready = "1";
})();
