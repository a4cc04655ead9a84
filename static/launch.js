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
    document.body.dataset.phase = phase;
  }
  function addToLog(text) {
    if (!text) return;
    if (log.textContent && !/\n$/.test(log.textContent)) log.appendChild(document.createTextNode("\n"));
    log.appendChild(document.createTextNode(text));
    log.scrollTop = log.scrollHeight;
  }
  function fail(text) {
    source.close();
    document.body.dataset.phase = "failed";
    // the step that failed: the one after the last reached, in red
    var next = last === null ? order[0] : order[Math.min(order.indexOf(last) + 1, order.length - 1)];
    var item = badge(next);
    if (item) {
      item.className = "list-inline-item badge text-bg-danger";
      item.textContent = next + " \u2715";
      item.setAttribute("aria-label", next + ": failed");
    }
    errorText.textContent = (text || "").trim();
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
    } else {
      addToLog(data.message);
      message.textContent = data.message;
    }
    if (data.phase === "ready" && data.url) {
      source.close();
      window.location.href = serverUrl(data);
    }
  };
  source.onerror = function () {
    if (document.body.dataset.phase !== "ready" && document.body.dataset.phase !== "failed") {
      fail("Lost the connection to the hub; reload the page to try again.");
    }
  };
})();
