// Small helpers of the service's pages (no framework, no inline script: the
// pages' Content-Security-Policy allows only files of the service and the hub).
(function () {
  "use strict";

  // --- the add form: a name suggested from the repository URL ---------------
  var repo = document.getElementById("repo");
  var name = document.getElementById("name");
  if (repo && name && name.form && name.form.id === "new-form") {
    var typed = name.value !== "";
    name.addEventListener("input", function () { typed = name.value !== ""; });
    var suggest = function () {
      if (typed) return;
      // the last path segment, without .git, made to fit the name rule
      var last = repo.value.trim().replace(/[?#].*$/, "").replace(/\/+$/, "").split(/[/:]/).pop() || "";
      name.value = last.replace(/\.git$/i, "").toLowerCase()
        .replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 63).replace(/-+$/, "");
    };
    repo.addEventListener("input", suggest);
    repo.addEventListener("change", suggest);
  }

  // --- typed confirmations: checked here, the error inside the box ----------
  Array.prototype.forEach.call(document.querySelectorAll("input[data-confirm]"), function (input) {
    var form = input.form;
    var help = document.getElementById(input.getAttribute("aria-describedby") || "");
    function check(showError) {
      var ok = input.value.trim() === input.dataset.confirm;
      input.classList.toggle("is-invalid", !ok && showError);
      input.classList.toggle("is-valid", ok);
      if (!ok && showError) input.setAttribute("aria-invalid", "true");
      else input.removeAttribute("aria-invalid");
      if (help) {
        help.textContent = ok ? "" : showError ?
          "Type " + input.dataset.confirm + " exactly (what you typed does not match)." : "";
        help.classList.toggle("text-danger", !ok && showError);
      }
      return ok;
    }
    input.addEventListener("input", function () { check(input.classList.contains("is-invalid")); });
    form.addEventListener("submit", function (event) {
      if (!check(true)) {
        event.preventDefault();
        input.focus();
      }
    });
  });

  // --- filter boxes over long lists ----------------------------------------
  Array.prototype.forEach.call(document.querySelectorAll("input[data-filter]"), function (box) {
    var status = document.createElement("div");
    status.className = "form-text";
    status.setAttribute("role", "status");
    box.insertAdjacentElement("afterend", status);
    box.addEventListener("input", function () {
      var words = box.value.toLowerCase().split(/\s+/).filter(Boolean);
      var shown = 0;
      var items = document.querySelectorAll(box.dataset.filter);
      Array.prototype.forEach.call(items, function (item) {
        var text = item.textContent.toLowerCase();
        var match = words.every(function (w) { return text.indexOf(w) >= 0; });
        item.hidden = !match;
        if (match) shown += 1;
      });
      status.textContent = words.length ? shown + " of " + items.length + " shown" : "";
    });
  });
})();
