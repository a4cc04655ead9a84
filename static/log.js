// Live build log: Server-Sent Events from the service's API. Lines are added
// as text nodes (never HTML); a reconnect resumes from the last line seen.
(function () {
  "use strict";
  var pre = document.getElementById("log");
  if (!pre || pre.dataset.final === "true" || !window.EventSource) return;
  // cookie-authenticated API requests carry the XSRF token, as the hub's own pages do
  var url = pre.dataset.logUrl + "?last_event_id=" + encodeURIComponent(pre.dataset.next || "0") +
    "&_xsrf=" + encodeURIComponent(pre.dataset.xsrf || "");
  var source = new EventSource(url);
  function atBottom() { return pre.scrollHeight - pre.scrollTop - pre.clientHeight < 40; }
  source.onmessage = function (event) {
    var follow = atBottom();
    var entry = JSON.parse(event.data);
    pre.appendChild(document.createTextNode(entry.message));
    if (follow) pre.scrollTop = pre.scrollHeight;
  };
  source.addEventListener("status", function (event) {
    var build = JSON.parse(event.data);
    var badge = document.querySelector("#build-status .r2d-status");
    if (badge) {
      badge.textContent = build.status;
      badge.dataset.status = build.status;
      badge.className = "badge r2d-status r2d-status-" + build.status;
    }
    var facts = document.getElementById("build-facts");
    if (facts && build.commit) {
      facts.textContent = "ref " + build.ref + ", commit " + build.commit +
        (build.image ? ", image " + build.image : "");
    }
    var queue = document.getElementById("queue-position");
    if (queue) queue.textContent = build.queue_position ? "#" + build.queue_position + " in the queue" : "";
    if (build.status !== "queued" && build.status !== "running") {
      source.close();
      var cancel = document.getElementById("cancel-form");
      if (cancel) cancel.remove();
      pre.dataset.final = "true";
    }
  });
})();
