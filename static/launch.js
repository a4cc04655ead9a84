// Launch page: follow the build events (BinderHub's phases) and open the
// server when it is ready, the way BinderHub's own page does: the server's
// root (ready.url) + the landing path + ?token=. Messages are added as text,
// never as HTML.
(function () {
  "use strict";
  var log = document.getElementById("launch-log");
  if (!log || !window.EventSource) return;
  var message = document.getElementById("launch-message");
  var errorBox = document.getElementById("launch-error");
  var errorText = document.getElementById("launch-error-text");
  var logBox = document.getElementById("launch-log-box");
  var landingPath = (log.dataset.landingPath || "").replace(/^\/+/, "");
  var source = new EventSource(log.dataset.eventsUrl);
  var order = ["waiting", "fetching", "building", "built", "launching", "ready"];
  var reached = {};
  var last = null;
  // how far along each phase is, for the progress bar; a build moves it on
  // slowly with its log lines, since its length is not known in advance
  var progressAt = { waiting: 5, fetching: 15, building: 25, built: 75, launching: 85, ready: 100 };
  var bar = document.getElementById("launch-progress-bar");
  var barBox = document.getElementById("launch-progress");
  var elapsed = document.getElementById("launch-elapsed");
  var slow = document.getElementById("launch-slow");
  var title = document.title;
  var started = Date.now();
  var SLOW_AFTER = 45;  // seconds: a launch of a built image takes a few
  var clock = window.setInterval(function () {
    var seconds = Math.round((Date.now() - started) / 1000);
    if (elapsed) elapsed.textContent = seconds + " s";
    if (slow && seconds >= SLOW_AFTER) slow.classList.remove("d-none");
  }, 1000);

  function progress(value) {
    if (!bar) return;
    var now = Number(barBox.getAttribute("aria-valuenow")) || 0;
    value = Math.max(now, Math.min(100, Math.round(value)));
    bar.style.width = value + "%";  // CSSOM, which the page's CSP allows
    barBox.setAttribute("aria-valuenow", String(value));
  }
  function stopClock() {
    window.clearInterval(clock);
    if (slow) slow.classList.add("d-none");
  }

  function badge(phase) {
    return document.querySelector('#phases [data-phase="' + phase + '"]');
  }
  // only phases this launch went through are coloured (a reused image
  // never passes "building")
  function mark(phase) {
    if (order.indexOf(phase) < 0) return;
    reached[phase] = true;
    last = phase;
    var item = badge(phase);
    if (item) item.className = "list-inline-item badge text-bg-primary";
    document.querySelectorAll("#phases [aria-current]").forEach(function (el) {
      el.removeAttribute("aria-current");
    });
    if (item) item.setAttribute("aria-current", "step");
    document.body.dataset.phase = phase;
    document.title = phase + " \u00b7 " + title;  // the status in the tab
    progress(progressAt[phase]);
  }
  function addToLog(text) {
    if (!text) return;
    if (log.textContent && !/\n$/.test(log.textContent)) log.appendChild(document.createTextNode("\n"));
    log.appendChild(document.createTextNode(text));
    log.scrollTop = log.scrollHeight;
  }
  function lastErrorLine() {
    var lines = log.textContent.split("\n");
    for (var i = lines.length - 1; i >= 0; i--) {
      var line = lines[i].trim();
      if (/^error\b/i.test(line) && !/^Error during build: Command/.test(line)) {
        return line.length > 400 ? line.slice(0, 400) + "\u2026" : line;
      }
    }
    return "";
  }
  function fail(text) {
    source.close();
    stopClock();
    document.body.dataset.phase = "failed";
    document.title = "failed \u00b7 " + title;
    if (bar) bar.classList.add("bg-danger");
    // the step that failed: the one after the last reached, in red
    var next = last === null ? order[0] : order[Math.min(order.indexOf(last) + 1, order.length - 1)];
    var item = badge(next);
    if (item) {
      item.className = "list-inline-item badge text-bg-danger";
      item.textContent = next + " \u2715";
      item.setAttribute("aria-label", next + ": failed");
    }
    errorText.textContent = (text || "").trim();
    // the build's own last error line, the one that says what went wrong
    // (not the long command line repo2docker prints after it)
    var detail = document.getElementById("launch-error-detail");
    if (detail) detail.textContent = lastErrorLine();
    errorBox.classList.remove("d-none");
    message.textContent = "";
    if (log.textContent) {
      logBox.open = true;
    } else {
      document.getElementById("launch-error-hint").classList.add("d-none");
      logBox.classList.add("d-none");
    }
  }
  function serverUrl(data) {
    var root = new URL(data.url, window.location.href);
    var target = new URL(landingPath, root);
    // never anywhere but this server
    if (target.origin !== root.origin || target.pathname.indexOf(root.pathname) !== 0) {
      target = root;
    }
    if (data.token) target.searchParams.append("token", data.token);
    return target.href;
  }
  source.onmessage = function (event) {
    var data = JSON.parse(event.data);
    if (data.phase === "failed") {
      fail(data.message);
      return;
    }
    mark(data.phase);
    if (data.phase === "building") {
      logBox.open = true;
      addToLog(data.message);
      // each log line moves the bar a little, never past "built"
      var now = Number(barBox && barBox.getAttribute("aria-valuenow")) || 25;
      progress(now + (74 - now) * 0.02);
    } else {
      addToLog(data.message);
      message.textContent = data.message;
    }
    if (data.phase === "ready" && data.url) {
      source.close();
      stopClock();
      window.location.href = serverUrl(data);
    }
  };
  source.onerror = function () {
    if (document.body.dataset.phase !== "ready" && document.body.dataset.phase !== "failed") {
      fail("Lost the connection to the hub; reload the page to try again.");
    }
  };
})();
