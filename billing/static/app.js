/* A little progressive enhancement; every page works without it.
 *  - [data-live-search]: results as you type (fetches a server-rendered, escaped fragment)
 *  - form[data-busy]: one submit only (no double redemption on a double tap)
 *  - [data-print]: print the page
 */
(function () {
  "use strict";

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  function fetchFragment(url) {
    return fetch(url, {
      credentials: "same-origin",
      headers: { "X-Requested-With": "fetch", "X-CSRFToken": csrfToken() }
    }).then(function (response) {
      if (response.status === 401) { window.location.reload(); }
      return response.text();
    });
  }

  function liveSearch(input) {
    var target = document.getElementById(input.getAttribute("data-target"));
    var url = input.getAttribute("data-live-search");
    var timer = null;
    var latest = 0;
    if (!target || !url) { return; }
    input.addEventListener("input", function () {
      window.clearTimeout(timer);
      timer = window.setTimeout(function () {
        var q = input.value.trim();
        // One letter or a few digits match half the clinic: wait for a second letter or a
        // fourth digit before asking (the search then reads a few rows, not thousands).
        var phoneLike = /^[0-9+()\s.-]+$/.test(q);
        if (q && (phoneLike ? q.replace(/[^0-9]/g, "").length < 4 : q.length < 2)) { return; }
        var ticket = ++latest;
        fetchFragment(url + "?q=" + encodeURIComponent(q)).then(function (html) {
          if (ticket !== latest) { return; } // an older answer arrived late
          target.innerHTML = html; // server-rendered with Jinja autoescape
          target.setAttribute("aria-busy", "false");
        });
        target.setAttribute("aria-busy", "true");
      }, 180);
    });
    input.addEventListener("keydown", function (event) {
      if (event.key === "ArrowDown") {
        var first = target.querySelector("a");
        if (first) { event.preventDefault(); first.focus(); }
      }
    });
    target.addEventListener("keydown", function (event) {
      var links = Array.prototype.slice.call(target.querySelectorAll("a"));
      var at = links.indexOf(document.activeElement);
      if (at < 0) { return; }
      if (event.key === "ArrowDown" && at < links.length - 1) { event.preventDefault(); links[at + 1].focus(); }
      if (event.key === "ArrowUp") { event.preventDefault(); (at === 0 ? input : links[at - 1]).focus(); }
    });
  }

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.hasAttribute("data-busy")) { return; }
    if (form.getAttribute("data-sent") === "1") { event.preventDefault(); return; }
    form.setAttribute("data-sent", "1");
    var button = form.querySelector("button[type=submit]");
    if (button) {
      button.setAttribute("aria-disabled", "true");
      button.textContent = form.getAttribute("data-busy");
    }
  });

  document.addEventListener("click", function (event) {
    var trigger = event.target.closest("[data-print]");
    if (trigger) { event.preventDefault(); window.print(); }
  });

  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("[data-live-search]"), liveSearch);
  });
})();
