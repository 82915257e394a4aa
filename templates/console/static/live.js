// Progressive enhancement of the live send view: poll the figures and update them in place.
// Without script the page still works (its "Refresh" link reloads it).
(function () {
  var box = document.getElementById("live");
  if (!box || !window.fetch) return;
  var source = box.getAttribute("data-source");
  function show(data) {
    Object.keys(data.counts || {}).forEach(function (state) {
      var cell = document.querySelector('[data-count="' + state + '"]');
      if (cell) cell.textContent = data.counts[state];
    });
    var set = function (name, value) { var el = document.querySelector('[data-figure="' + name + '"]'); if (el) el.textContent = value; };
    set("state", data.state || "-");
    set("rate", data.rate_per_second + " / s");
    set("eta", data.eta_seconds === null ? "-" : data.eta_seconds + " s");
    set("remaining", data.remaining);
    var r = data.retry;
    if (r) set("retry", r.running ? "Retry of the deferred rows running (started by " + r.by + " at " + r.started_at + ")."
                                  : "The last retry (started by " + r.by + " at " + r.started_at + ") finished with exit code "
                                    + r.exit_code + (r.last_line ? ": " + r.last_line : "") + ".");
    if (!data.done) window.setTimeout(poll, 2000);
  }
  function poll() {
    fetch(source, {credentials: "same-origin", cache: "no-store"})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) { if (data) show(data); });
  }
  window.setTimeout(poll, 1000);
})();
