// filterd's admin page: the query log follows new rows (server-sent events). Without this script the page still
// works: the "Refresh" link reloads it. Rows arrive as HTML the server escaped (filterd/web/templates/console/row.html).
"use strict";
(function () {
  var table = document.getElementById("log-rows");
  var follow = document.getElementById("follow");
  var status = document.getElementById("live-status");
  if (!table || !follow || !window.EventSource) { return; }
  var source = null;
  var limit = 300;
  function start() {
    var url = "/log/live?" + table.getAttribute("data-live");
    source = new EventSource(url);
    source.addEventListener("row", function (event) {
      var body = table.tBodies[0];
      body.insertAdjacentHTML("afterbegin", event.data);
      var empty = document.getElementById("no-rows");
      if (empty) { empty.remove(); }
      while (body.rows.length > limit) { body.deleteRow(-1); }
      status.textContent = "Following new queries (last at " + new Date().toLocaleTimeString() + ")";
    });
    source.onopen = function () { status.textContent = "Following new queries"; };
    source.onerror = function () { status.textContent = "Reconnecting..."; };
  }
  function stop() {
    if (source) { source.close(); source = null; }
    status.textContent = "Not following";
  }
  follow.hidden = false;
  follow.querySelector("input").addEventListener("change", function (event) {
    if (event.target.checked) { start(); } else { stop(); }
  });
  if (follow.querySelector("input").checked) { start(); }
}());
