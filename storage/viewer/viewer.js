(function () {
  "use strict";
  // Data arrives as JSON in a non-executable script element; it is only ever written with textContent.
  // State (search, sort, validated filter, page) lives in the URL fragment: each change replaces the
  // current history entry, so Back from a feature page returns to exactly what was on screen.
  var data = JSON.parse(document.getElementById("plmlabel-data").textContent);
  var features = data.features;
  var hrefPattern = typeof data.feature_href === "string" ? data.feature_href : "features/{n}.html";
  var PAGE_SIZE = 100;
  var input = document.getElementById("q");
  var sortSelect = document.getElementById("sort");
  var validatedBox = document.getElementById("validated");
  var tbody = document.getElementById("rows");
  var count = document.getElementById("count");
  var pageLabel = document.getElementById("page");
  var prevButton = document.getElementById("prev");
  var nextButton = document.getElementById("next");
  var page = 0;

  features.forEach(function (f) {
    f._text = ["f/" + f.feature, String(f.feature), f.label || "", f.description || "",
      (f.concepts || []).join(" "), f.top_concept || ""].join(" ").toLowerCase();
  });

  function byNumber(key, ascending) {
    return function (a, b) {
      var x = a[key], y = b[key];
      if (x === null && y === null) return a.feature - b.feature;
      if (x === null || x === undefined) return 1;
      if (y === null || y === undefined) return -1;
      return (ascending ? x - y : y - x) || (a.feature - b.feature);
    };
  }
  var SORTS = {
    score: byNumber("pearson", false),
    spearman: byNumber("spearman", false),
    frac: byNumber("frac_proteins", true),
    feature: function (a, b) { return a.feature - b.feature; },
    label: function (a, b) { return (a.label || "").localeCompare(b.label || "") || a.feature - b.feature; }
  };

  function fmt(value) { return value === null || value === undefined ? "" : Number(value).toFixed(2); }
  function pct(value) { return value === null || value === undefined ? "" : (100 * value).toFixed(1) + "%"; }

  function cell(row, text, className) {
    var td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  function link(feature, text) {
    var a = document.createElement("a");
    a.href = hrefPattern.replace("{n}", String(Number(feature)));
    a.textContent = text;
    return a;
  }

  function state() {
    var params = new URLSearchParams();
    if (input.value) params.set("q", input.value);
    if (sortSelect.value !== "score") params.set("sort", sortSelect.value);
    if (validatedBox.checked) params.set("validated", "1");
    if (page > 0) params.set("page", String(page + 1));
    return params.toString();
  }

  function saveState() {
    var hash = state();
    var url = location.pathname + location.search + (hash ? "#" + hash : "");
    if (url !== location.pathname + location.search + location.hash) {
      try { history.replaceState(null, "", url); } catch (e) { /* some file:// hosts refuse; state stays on screen */ }
    }
  }

  function render() {
    var terms = input.value.toLowerCase().split(/\s+/).filter(Boolean);
    var shown = features.filter(function (f) {
      if (validatedBox.checked && !f.validated) return false;
      return terms.every(function (t) { return f._text.indexOf(t) !== -1; });
    });
    shown.sort(SORTS[sortSelect.value] || SORTS.score);
    var pages = Math.max(1, Math.ceil(shown.length / PAGE_SIZE));
    if (page >= pages) page = pages - 1;
    if (page < 0) page = 0;
    var fragment = document.createDocumentFragment();
    shown.slice(page * PAGE_SIZE, (page + 1) * PAGE_SIZE).forEach(function (f) {
      var tr = document.createElement("tr");
      tr.className = "feature-row";
      tr.setAttribute("data-feature", String(Number(f.feature)));
      cell(tr, "").appendChild(link(f.feature, String(f.feature)));
      cell(tr, "", "label").appendChild(link(f.feature, f.label || "(no label)"));
      cell(tr, f.description || "", "desc");
      cell(tr, f.top_concept || "", "concept");
      cell(tr, fmt(f.pearson), "num");
      cell(tr, fmt(f.spearman), "num");
      cell(tr, pct(f.frac_proteins), "num");
      cell(tr, f.n_heldout === null || f.n_heldout === undefined ? "" : String(f.n_heldout), "num");
      var badge = document.createElement("span");
      badge.className = "badge " + (f.validated ? "ok" : "no");
      badge.textContent = f.validated ? "validated" : "no";
      cell(tr, "").appendChild(badge);
      fragment.appendChild(tr);
    });
    tbody.replaceChildren(fragment);
    count.textContent = shown.length + " of " + features.length + " features";
    pageLabel.textContent = "page " + (page + 1) + " of " + pages;
    prevButton.disabled = page === 0;
    nextButton.disabled = page >= pages - 1;
    saveState();
  }

  function fromLocation() {
    var params = new URLSearchParams(location.search);
    var hash = new URLSearchParams(location.hash.replace(/^#/, ""));
    function get(key) { return hash.get(key) !== null ? hash.get(key) : params.get(key); }
    input.value = get("q") || "";
    var sort = get("sort");
    sortSelect.value = sort && Object.prototype.hasOwnProperty.call(SORTS, sort) ? sort : "score";
    validatedBox.checked = get("validated") === "1";
    var n = parseInt(get("page") || "1", 10);
    page = isFinite(n) && n > 0 ? n - 1 : 0;
  }

  function restart() { page = 0; render(); }

  Array.prototype.forEach.call(document.querySelectorAll("th[data-sort]"), function (th) {
    th.addEventListener("click", function () { sortSelect.value = th.getAttribute("data-sort"); restart(); });
  });
  input.addEventListener("input", restart);
  sortSelect.addEventListener("change", restart);
  validatedBox.addEventListener("change", restart);
  prevButton.addEventListener("click", function () { page -= 1; render(); window.scrollTo(0, 0); });
  nextButton.addEventListener("click", function () { page += 1; render(); window.scrollTo(0, 0); });
  window.addEventListener("hashchange", function () { fromLocation(); render(); });
  // Back/Forward may restore this page from the cache or refill the form from memory: the URL wins.
  window.addEventListener("pageshow", function () { fromLocation(); render(); });
  fromLocation();
  render();
})();
