(function () {
  "use strict";
  // Data arrives as JSON in a non-executable script element; it is only ever written with textContent.
  var data = JSON.parse(document.getElementById("plmlabel-data").textContent);
  var features = data.features;
  var MAX_ROWS = 1000;
  var input = document.getElementById("q");
  var sortSelect = document.getElementById("sort");
  var validatedBox = document.getElementById("validated");
  var tbody = document.getElementById("rows");
  var count = document.getElementById("count");

  features.forEach(function (f) {
    f._text = ["f/" + f.feature, f.label || "", f.description || "", (f.concepts || []).join(" ")]
      .join(" ").toLowerCase();
  });

  function byNumberDesc(key) {
    return function (a, b) {
      var x = a[key], y = b[key];
      if (x === null && y === null) return a.feature - b.feature;
      if (x === null) return 1;
      if (y === null) return -1;
      return (y - x) || (a.feature - b.feature);
    };
  }
  var SORTS = {
    score: byNumberDesc("pearson"),
    spearman: byNumberDesc("spearman"),
    feature: function (a, b) { return a.feature - b.feature; },
    label: function (a, b) { return (a.label || "").localeCompare(b.label || "") || a.feature - b.feature; }
  };

  function fmt(value) { return value === null || value === undefined ? "" : Number(value).toFixed(2); }

  function cell(row, text, className) {
    var td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  function link(feature, text) {
    var a = document.createElement("a");
    a.href = "features/" + Number(feature) + ".html";
    a.textContent = text;
    return a;
  }

  function render() {
    var terms = input.value.toLowerCase().split(/\s+/).filter(Boolean);
    var shown = features.filter(function (f) {
      if (validatedBox.checked && !f.validated) return false;
      return terms.every(function (t) { return f._text.indexOf(t) !== -1; });
    });
    shown.sort(SORTS[sortSelect.value] || SORTS.score);
    var fragment = document.createDocumentFragment();
    shown.slice(0, MAX_ROWS).forEach(function (f) {
      var tr = document.createElement("tr");
      tr.className = "feature-row";
      tr.setAttribute("data-feature", String(Number(f.feature)));
      cell(tr, "").appendChild(link(f.feature, String(f.feature)));
      cell(tr, "", "label").appendChild(link(f.feature, f.label || "(no label)"));
      cell(tr, f.description || "", "desc");
      cell(tr, fmt(f.pearson), "num");
      cell(tr, fmt(f.spearman), "num");
      cell(tr, f.n_heldout === null ? "" : String(f.n_heldout), "num");
      var badge = document.createElement("span");
      badge.className = "badge " + (f.validated ? "ok" : "no");
      badge.textContent = f.validated ? "validated" : "no";
      cell(tr, "").appendChild(badge);
      fragment.appendChild(tr);
    });
    tbody.replaceChildren(fragment);
    count.textContent = shown.length + " of " + features.length + " features" +
      (shown.length > MAX_ROWS ? " (first " + MAX_ROWS + " shown)" : "");
  }

  function fromLocation() {
    var params = new URLSearchParams(location.search);
    var hash = new URLSearchParams(location.hash.replace(/^#/, ""));
    var q = hash.get("q") !== null ? hash.get("q") : params.get("q");
    var sort = hash.get("sort") || params.get("sort");
    input.value = q || "";
    if (sort && Object.prototype.hasOwnProperty.call(SORTS, sort)) sortSelect.value = sort;
    if ((hash.get("validated") || params.get("validated")) === "1") validatedBox.checked = true;
  }

  Array.prototype.forEach.call(document.querySelectorAll("th[data-sort]"), function (th) {
    th.addEventListener("click", function () { sortSelect.value = th.getAttribute("data-sort"); render(); });
  });
  input.addEventListener("input", render);
  sortSelect.addEventListener("change", render);
  validatedBox.addEventListener("change", render);
  window.addEventListener("hashchange", function () { fromLocation(); render(); });
  fromLocation();
  render();
})();
