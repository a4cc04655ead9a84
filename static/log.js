// Live build page: the log arrives as Server-Sent Events from the service's
// API; lines are added as text nodes (never HTML) and a reconnect resumes
// from the last line seen. The status, the elapsed time and the result (a
// start button, or the last errors of the log) change without a reload.
(function () {
  "use strict";
  var pre = document.getElementById("log");
  if (!pre) return;
  var elapsed = document.getElementById("elapsed");
  var FINAL = ["succeeded", "failed", "cancelled", "interrupted"];

  function duration(seconds) {
    seconds = Math.max(0, Math.round(seconds));
    if (seconds < 60) return seconds + " s";
    var minutes = Math.floor(seconds / 60);
    if (minutes < 60) return minutes + " min " + (seconds % 60) + " s";
    return Math.floor(minutes / 60) + " h " + (minutes % 60) + " min";
  }

  function time(value) {
    var t = value ? Date.parse(value) : NaN;
    return isNaN(t) ? null : t;
  }

  var state = {
    status: (document.querySelector("#build-status [data-status]") || {}).dataset,
    created: elapsed && time(elapsed.dataset.created),
    started: elapsed && time(elapsed.dataset.started),
  };
  state.status = state.status ? state.status.status : "";

  function tick() {
    if (!elapsed || FINAL.indexOf(state.status) >= 0) return;
    var since = state.started || state.created;
    if (!since) return;
    var what = state.status === "queued" ? "waiting for " : "running for ";
    elapsed.textContent = what + duration((Date.now() - since) / 1000);
  }
  var timer = pre.dataset.final === "true" ? null : window.setInterval(tick, 1000);
  tick();

  // the same choice as pages.error_summary: error-looking lines near the
  // end, each once, without BuildKit's prefixes and the long command line
  function summaryLine(line) {
    var text = line.trim().replace(/^(?:#\d+ )?(?:\d+\.\d+ )?/, "");
    if (text.length > 2000 || text.indexOf("docker buildx") === 0 ||
        text.indexOf("Error during build: Command") === 0 || text.indexOf("---") === 0 ||
        text.indexOf("'docker', 'buildx'") >= 0) return "";
    return text;
  }
  function errorSummary(text) {
    var seen = {};
    var lines = text.split("\n").slice(-60).map(summaryLine).filter(function (l) {
      if (!l || seen[l]) return false;
      seen[l] = true;
      return true;
    });
    var errors = lines.filter(function (l) {
      return /\b(?:error|failed|fatal|exception|denied|cannot)\b|not found|no such|non-zero/i.test(l);
    });
    return (errors.length ? errors : lines).slice(-6).map(function (l) {
      return l.length > 300 ? l.slice(0, 299) + "\u2026" : l;
    }).join("\n");
  }

  function element(tag, attrs, text) {
    var el = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { el.setAttribute(k, attrs[k]); });
    if (text) el.textContent = text;
    return el;
  }

  function showResult(build) {
    var box = document.getElementById("build-result");
    if (!box || box.dataset.status === build.status) return;
    box.dataset.status = build.status;
    box.textContent = "";
    var alert;
    if (build.status === "succeeded") {
      alert = element("div", { "class": "alert alert-success", id: "build-succeeded" });
      alert.appendChild(element("strong", {}, "Built."));
      if (box.dataset.startUrl) {
        alert.appendChild(document.createTextNode(" "));
        alert.appendChild(element("a", {
          "class": "btn btn-success btn-sm ms-2", id: "start-server", href: box.dataset.startUrl,
        }, "Start a server with this environment"));
      }
    } else {
      alert = element("div", { "class": "alert alert-danger", id: "build-error" });
      alert.appendChild(element("strong", {}, "The build " + build.status + "."));
      if (build.error) alert.appendChild(document.createTextNode(" " + build.error));
      var summary = errorSummary(pre.textContent);
      if (summary && build.status === "failed") {
        alert.appendChild(element("p", { "class": "mb-1 mt-2" }, "The last errors in the log:"));
        alert.appendChild(element("pre", {
          "class": "r2d-error-summary mb-0", id: "build-error-summary", tabindex: "0",
          "aria-label": "Last errors of the build log",
        }, summary));
      }
    }
    box.appendChild(alert);
  }

  function update(build) {
    state.status = build.status;
    state.started = time(build.started_at) || state.started;
    var badge = document.querySelector("#build-status .r2d-status");
    if (badge) {
      badge.textContent = build.status;
      badge.dataset.status = build.status;
      badge.className = "badge r2d-status r2d-status-" + build.status;
    }
    var commit = document.getElementById("build-commit");
    if (build.commit && !commit) {
      var facts = document.getElementById("build-facts");
      if (facts) {
        facts.insertBefore(document.createTextNode(", commit "), facts.childNodes[2] || null);
        facts.insertBefore(element("code", { id: "build-commit" }, build.commit),
          facts.childNodes[3] || null);
      }
    }
    var queue = document.getElementById("queue-position");
    if (queue) queue.textContent = build.queue_position ? "#" + build.queue_position + " in the queue" : "";
    if (FINAL.indexOf(build.status) >= 0) {
      if (timer) window.clearInterval(timer);
      if (elapsed && build.duration != null) elapsed.textContent = "took " + duration(build.duration);
      var cancel = document.getElementById("cancel-form");
      if (cancel) cancel.remove();
      pre.dataset.final = "true";
      showResult(build);
      document.title = (build.status === "succeeded" ? "Built: " : "Build " + build.status + ": ") +
        document.title.replace(/^(Built|Build \w+): /, "");
    } else {
      tick();
    }
  }

  if (pre.dataset.final === "true" || !window.EventSource) return;
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
    update(build);
    if (FINAL.indexOf(build.status) >= 0) source.close();
  });
})();
