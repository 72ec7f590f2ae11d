// interp feature pages: draws the page from the JSON block #pages-data.
// Token text is data: it reaches the page only through textContent and attribute values
// (title), never through innerHTML, so a token that looks like markup shows as text.
(function () {
  "use strict";
  var t0 = performance.now();
  var D = JSON.parse(document.getElementById("pages-data").textContent);
  var V = D.vocab, F = D.features, SVGNS = "http://www.w3.org/2000/svg";
  var byIndex = {};
  F.forEach(function (f) { byIndex[f.i] = f; });
  var state = { sort: D.sort, dead: true, filter: "", current: null, dfa: false };
  var status = document.getElementById("status");

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function sv(tag, attrs) {
    var e = document.createElementNS(SVGNS, tag);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    return e;
  }
  function fmt(x) {
    if (x === 0) return "0";
    var a = Math.abs(x);
    if (a >= 1000 || a < 0.001) return x.toExponential(2);
    return x.toPrecision(3).replace(/\.?0+$/, "");
  }
  function density(d) {
    if (d === 0) return "0";
    return (d * 100).toPrecision(3).replace(/\.?0+$/, "") + "%";
  }
  // Chips stand alone: whitespace-only tokens get visible spaces.
  function chip(s) { return /^\s+$/.test(s) ? s.replace(/ /g, "\u2423") : s; }
  function say(text) { status.textContent = text; }

  // ------------------------------------------------------------------ header
  document.getElementById("title").textContent = D.title;
  document.getElementById("meta").textContent = D.meta;
  var notes = document.getElementById("notes");
  D.notes.forEach(function (n) { notes.appendChild(el("div", "note", n)); });

  // ------------------------------------------------------------------ list
  function topTokens(f) { // the tokens its top examples fire on, most frequent first
    var counts = {}, order = [];
    f.top.forEach(function (ex) {
      var s = V[ex.t[ex.q]];
      if (!(s in counts)) { counts[s] = 0; order.push(s); }
      counts[s] += 1;
    });
    order.sort(function (a, b) { return counts[b] - counts[a]; });
    return order.slice(0, 3);
  }
  var SORTS = { density: "density", max: "max activation", mean: "mean activation", index: "index" };
  function key(f) { return state.sort === "index" ? -f.i : f[state.sort]; }
  function sorted() {
    return F.slice().sort(function (a, b) { return (key(b) - key(a)) || (a.i - b.i); });
  }
  var controls = document.getElementById("controls");
  var sel = el("select");
  sel.id = "sort";
  Object.keys(SORTS).forEach(function (k) {
    var o = el("option", null, "sort by " + SORTS[k]);
    o.value = k;
    if (k === state.sort) o.selected = true;
    sel.appendChild(o);
  });
  sel.addEventListener("change", function () { state.sort = sel.value; renderList(); });
  controls.appendChild(sel);
  var deadBox = el("input");
  deadBox.type = "checkbox"; deadBox.id = "show-dead"; deadBox.checked = true;
  deadBox.addEventListener("change", function () { state.dead = deadBox.checked; renderList(); });
  var deadLabel = el("label", null, " dead");
  deadLabel.insertBefore(deadBox, deadLabel.firstChild);
  controls.appendChild(deadLabel);
  var search = el("input");
  search.type = "search"; search.id = "filter"; search.placeholder = "filter by token";
  search.addEventListener("input", function () { state.filter = search.value; renderList(); });
  controls.appendChild(search);
  var counter = el("span", "meta");
  controls.appendChild(counter);

  var maxDensity = Math.max.apply(null, F.map(function (f) { return f.density; }).concat([1e-12]));
  var tbody = document.querySelector("#list tbody");
  var thead = document.querySelector("#list thead");
  var hr = el("tr");
  ["feature", "density", "max", "fires on", "promotes"].forEach(function (h) { hr.appendChild(el("th", null, h)); });
  thead.appendChild(hr);
  var rows = {};
  F.forEach(function (f) { // one row per feature, made once; sorting and filtering reorder or hide them
    var tr = el("tr", "frow" + (f.dead ? " dead" : ""));
    tr.dataset.index = f.i;
    var a = el("a", null, "#" + f.i);
    a.href = "#f" + f.i;
    var td = el("td"); td.appendChild(a); tr.appendChild(td);
    var d = el("td", "num", f.dead ? "dead" : density(f.density));
    var bar = el("span", "bar");
    bar.style.width = Math.round(40 * Math.sqrt(f.density / maxDensity)) + "px";
    if (!f.dead) d.appendChild(bar);
    tr.appendChild(d);
    tr.appendChild(el("td", "num", f.dead ? "" : fmt(f.max)));
    f.label = topTokens(f);
    tr.appendChild(el("td", "toks", f.label.map(chip).join("  ")));
    tr.appendChild(el("td", "toks", f.pos.slice(0, 3).map(function (p) { return chip(V[p[0]]); }).join("  ")));
    tr.addEventListener("click", function (ev) { ev.preventDefault(); go(f.i); });
    rows[f.i] = tr;
  });
  function matches(f) {
    if (!state.dead && f.dead) return false;
    if (!state.filter) return true;
    var q = state.filter.toLowerCase();
    return f.label.concat(f.pos.slice(0, 10).map(function (p) { return V[p[0]]; }))
      .some(function (s) { return s.toLowerCase().indexOf(q) >= 0; });
  }
  function renderList() {
    var shown = 0;
    sorted().forEach(function (f) {
      var tr = rows[f.i];
      tr.style.display = matches(f) ? "" : "none";
      if (tr.style.display === "") shown += 1;
      tbody.appendChild(tr);
    });
    counter.textContent = shown + " of " + F.length + " features";
  }

  // ------------------------------------------------------------------ one feature
  function example(f, ex, useDfa) {
    var row = el("div", "ex");
    var peak = 0;
    if (useDfa) ex.d.forEach(function (x) { peak = Math.max(peak, Math.abs(x)); });
    row.appendChild(el("span", "val", fmt(ex.v[ex.q])));
    ex.t.forEach(function (t, j) {
      var s = el("span", "tok" + (j === ex.q ? " q" : ""), V[t]);
      var v = ex.v[j], tip;
      if (useDfa) {
        var x = ex.d[j], a = peak > 0 ? Math.min(1, Math.abs(x) / peak) : 0;
        s.style.background = "rgba(" + (x >= 0 ? "47,95,179" : "200,60,40") + "," + a.toFixed(3) + ")";
        tip = "DFA " + fmt(x) + " (activation " + fmt(v) + ")";
      } else {
        var b = f.max > 0 ? Math.min(1, Math.max(0, v / f.max)) : 0;
        s.style.background = "rgba(255,128,0," + b.toFixed(3) + ")";
        tip = "activation " + fmt(v);
      }
      s.title = JSON.stringify(V[t]) + "  " + tip;
      s.addEventListener("mouseenter", function () {
        say("#" + f.i + "  window " + ex.w + ", position " + (ex.p - ex.q + j) + "  " + JSON.stringify(V[t]) + "  " + tip);
      });
      row.appendChild(s);
    });
    return row;
  }
  function histogram(xs, ys, cls, width, height, intervals) {
    var svg = sv("svg", { "class": "hist", width: width, height: height + 16, viewBox: "0 0 " + width + " " + (height + 16) });
    var n = ys.length;
    if (!n) return svg;
    var ymax = Math.max.apply(null, ys.concat([1])), step = xs.length > 1 ? xs[1] - xs[0] : 1;
    var x0 = xs[0] - step / 2, x1 = xs[n - 1] + step / 2;
    if (xs[0] >= 0) x0 = Math.max(0, x0); // activations: the first bin starts at 0 (centres are rounded)
    var sx = width / (x1 - x0 || 1);
    (intervals || []).forEach(function (iv, k) {
      svg.appendChild(sv("rect", { "class": "iv" + (k % 2 ? " odd" : ""), x: (iv.lo - x0) * sx, y: 0,
        width: Math.max(0, (iv.hi - iv.lo) * sx), height: height }));
    });
    ys.forEach(function (y, i) {
      var h = height * y / ymax, r = sv("rect", { "class": "b" + cls + (xs[i] < 0 ? " n" : ""), x: (xs[i] - step / 2 - x0) * sx,
        y: height - h, width: Math.max(1, step * sx - 1), height: h });
      var t = sv("title", {});
      t.textContent = fmt(xs[i] - step / 2) + " to " + fmt(xs[i] + step / 2) + ": " + y;
      r.appendChild(t);
      svg.appendChild(r);
    });
    [[x0, "start"], [x1, "end"]].forEach(function (p) {
      var t = sv("text", { x: p[1] === "start" ? 2 : width - 2, y: height + 12, "text-anchor": p[1] });
      t.textContent = fmt(p[0]);
      svg.appendChild(t);
    });
    return svg;
  }
  function logitTable(title, items, cls) {
    var t = el("table", "lg");
    var h = el("tr"), th = el("th", null, title);
    th.colSpan = 2; h.appendChild(th); t.appendChild(h);
    items.forEach(function (p) {
      var tr = el("tr"), a = el("td"), b = el("td", "v", (p[1] > 0 ? "+" : "") + fmt(p[1]));
      a.appendChild(el("span", "chip " + cls, chip(V[p[0]])));
      tr.appendChild(a); tr.appendChild(b); t.appendChild(tr);
    });
    if (!items.length) {
      var tr = el("tr"), td = el("td", "empty", "no direct path to the logits from this hook");
      td.colSpan = 2; tr.appendChild(td); t.appendChild(tr);
    }
    return t;
  }
  function renderFeature(f) {
    var page = document.getElementById("page");
    page.textContent = "";
    var s = el("section", "feature");
    s.id = "f" + f.i;
    var h = el("h2", null, "Feature " + f.i);
    if (f.dead) h.appendChild(el("span", "badge dead", "dead"));
    else if (f.label.length) h.appendChild(el("span", "badge", "fires on " + f.label.map(chip).join(" ")));
    s.appendChild(h);
    var nums = el("div", "numbers");
    function num(label, value) {
      var d = el("span", null, label + " ");
      d.appendChild(el("b", null, value));
      nums.appendChild(d);
    }
    num("density", f.dead ? "0 (dead: it never fired on these tokens)" : density(f.density) + " (" + f.n + " tokens)");
    if (!f.dead) { num("max", fmt(f.max)); num("mean when active", fmt(f.mean)); }
    s.appendChild(nums);
    var top = el("div", "row2");
    if (!f.dead) {
      var hb = el("div");
      hb.appendChild(el("h3", null, "Activation histogram"));
      hb.appendChild(histogram(f.hx, f.hy, "", 380, 90, f.bins));
      top.appendChild(hb);
    }
    var lb = el("div");
    lb.appendChild(el("h3", null, "Logit effects (direct, per unit)"));
    var lg = el("div", "logits");
    lg.appendChild(logitTable("promotes", f.pos, "pos"));
    lg.appendChild(logitTable("suppresses", f.neg, "neg"));
    lb.appendChild(lg);
    if (f.ly.length) lb.appendChild(histogram(f.lx, f.ly, " l", 300, 50, null));
    top.appendChild(lb);
    if (f.heads.length) {
      var hd = el("div");
      hd.appendChild(el("h3", null, "Head weights"));
      var bars = el("div", "heads"), ax = el("div", "heads-ax");
      f.heads.forEach(function (w, i) {
        var b = el("div", "hb");
        b.style.height = Math.round(60 * w / Math.max.apply(null, f.heads.concat([1e-12]))) + "px";
        b.title = "head " + i + ": " + fmt(w);
        bars.appendChild(b);
        ax.appendChild(el("span", null, i));
      });
      hd.appendChild(bars); hd.appendChild(ax);
      top.appendChild(hd);
    }
    s.appendChild(top);
    if (f.dead) {
      s.appendChild(el("p", "empty", "No examples: this feature never fired on the text."));
    } else {
      var th = el("h3", null, "Top examples");
      var hasDfa = f.top.length && f.top[0].d;
      var box = el("div", "exs top");
      if (hasDfa) {
        var lab = el("label", "toggle"), cb = el("input");
        cb.type = "checkbox"; cb.id = "dfa"; cb.checked = state.dfa;
        lab.appendChild(cb); lab.appendChild(document.createTextNode(" colour by source attribution (DFA)"));
        cb.addEventListener("change", function () { state.dfa = cb.checked; fill(); });
        th.appendChild(lab);
      }
      function fill() {
        box.textContent = "";
        f.top.forEach(function (ex) { box.appendChild(example(f, ex, hasDfa && state.dfa)); });
      }
      fill();
      s.appendChild(th); s.appendChild(box);
      s.appendChild(el("h3", null, "Examples by activation interval"));
      f.bins.forEach(function (b) {
        s.appendChild(el("div", "ivhead", "activation " + fmt(b.lo) + " – " + fmt(b.hi) + " · " +
          (b.share * 100).toPrecision(3).replace(/\.?0+$/, "") + "% of firings"));
        var bx = el("div", "exs bin");
        b.ex.forEach(function (ex) { bx.appendChild(example(f, ex, false)); });
        s.appendChild(bx);
      });
    }
    page.appendChild(s);
  }

  // ------------------------------------------------------------------ navigation: #f{index}
  function go(i, fromHash) {
    var f = byIndex[i];
    if (!f) return;
    if (state.current !== null && rows[state.current]) rows[state.current].classList.remove("current");
    state.current = i;
    rows[i].classList.add("current");
    renderFeature(f);
    if (!fromHash) {
      try { if (location.hash !== "#f" + i) location.hash = "f" + i; } catch (e) { /* a sandboxed frame */ }
    }
    var sec = document.getElementById("f" + i);
    if (fromHash && sec && sec.scrollIntoView) sec.scrollIntoView();
  }
  function fromHash() {
    var m = /^#f(\d+)$/.exec(location.hash || "");
    return m && byIndex[+m[1]] ? +m[1] : null;
  }
  window.addEventListener("hashchange", function () { var i = fromHash(); if (i !== null && i !== state.current) go(i, true); });
  renderList();
  var first = fromHash();
  if (first !== null) go(first, true);
  else if (F.length) go(+tbody.querySelector("tr.frow").dataset.index, true);
  document.body.dataset.renderMs = Math.round(performance.now() - t0);
  document.body.dataset.ready = "1";
})();
