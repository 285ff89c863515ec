// Drover console: the little that needs a script. Every page works without it.
// 1. Live regions: an element with data-live="URL" is replaced by the HTML fragment at
//    URL every data-every milliseconds (default 2000) while the page is visible; it
//    stops once the fragment says data-final (an activity that has finished).
// 2. The operation form: choosing a code fills the payload box with that code's example
//    (data-example on its <option>) when the box is empty or still holds an example.
// 3. The group query editor: a textarea with data-count="ID" shows, in the <output> ID,
//    how many devices the query typed so far matches (asked 400 ms after typing stops).
"use strict";
(function () {
  function live(el) {
    var url = el.getAttribute("data-live");
    var every = parseInt(el.getAttribute("data-every") || "2000", 10);
    function tick() {
      if (document.hidden) { return setTimeout(tick, every); }
      fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (r) { if (!r.ok || r.redirected) { throw new Error(r.status); } return r.text(); })
        .then(function (html) {
          var box = document.createElement("div");
          box.innerHTML = html;
          var fresh = box.firstElementChild;
          if (!fresh) { return; }
          el.replaceWith(fresh);
          el = fresh;
          if (!el.hasAttribute("data-final")) { setTimeout(tick, every); }
        })
        .catch(function () { setTimeout(tick, every * 3); });
    }
    if (!el.hasAttribute("data-final")) { setTimeout(tick, every); }
  }
  function operationForm(select) {
    var box = document.getElementById(select.getAttribute("data-payload"));
    if (!box) { return; }
    var last = null;
    select.addEventListener("change", function () {
      var opt = select.options[select.selectedIndex];
      var example = opt ? opt.getAttribute("data-example") || "" : "";
      if (box.value.trim() === "" || box.value === last) { box.value = example; last = example; }
    });
  }
  function counter(area) {
    var out = document.getElementById(area.getAttribute("data-count"));
    var timer = null;
    area.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(function () {
        fetch("/console/groups/count?query=" + encodeURIComponent(area.value), { credentials: "same-origin" })
          .then(function (r) { return r.ok ? r.text() : ""; })
          .then(function (html) {
            var box = document.createElement("div");
            box.innerHTML = html;
            var fresh = box.firstElementChild;
            if (fresh && out) { out.textContent = fresh.textContent; }
          })
          .catch(function () {});
      }, 400);
    });
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("textarea[data-count]").forEach(counter);
    document.querySelectorAll("[data-live]").forEach(live);
    document.querySelectorAll("select[data-payload]").forEach(operationForm);
  });
})();
