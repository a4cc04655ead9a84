// Launch page: follow the build events (BinderHub's phases) and open the
// server when it is ready. Messages are added as text, never as HTML.
(function () {
  "use strict";
  var log = document.getElementById("launch-log");
  if (!log || !window.EventSource) return;
  var message = document.getElementById("launch-message");
  var errorBox = document.getElementById("launch-error");
  var source = new EventSource(log.dataset.eventsUrl);
  function mark(phase) {
    var items = document.querySelectorAll("#phases [data-phase]");
    var reached = true;
    items.forEach(function (item) {
      item.className = "list-inline-item badge " + (reached ? "text-bg-primary" : "text-bg-light");
      if (item.dataset.phase === phase) reached = false;
    });
    document.body.dataset.phase = phase;
  }
  source.onmessage = function (event) {
    var data = JSON.parse(event.data);
    mark(data.phase);
    if (data.phase === "building") {
      document.getElementById("launch-log-box").open = true;
      log.appendChild(document.createTextNode(data.message));
      log.scrollTop = log.scrollHeight;
    } else {
      message.textContent = data.message;
    }
    if (data.phase === "failed") {
      source.close();
      errorBox.textContent = data.message;
      errorBox.classList.remove("d-none");
    }
    if (data.phase === "ready" && data.url) {
      source.close();
      window.location.href = data.url;
    }
  };
  source.onerror = function () {
    if (document.body.dataset.phase !== "ready") {
      errorBox.textContent = "Lost the connection to the hub; reload the page to try again.";
      errorBox.classList.remove("d-none");
      source.close();
    }
  };
})();
