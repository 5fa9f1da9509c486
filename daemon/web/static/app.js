/* Firehouse command center: keeps a page live without reloading it.
 *
 * Polls the page's fragment URL (<main data-live>) every second and swaps the new content
 * in when it changed; ticks the stopwatches ([data-since]) and countdowns ([data-until])
 * every second against the server's clock (from the Date header); says loudly when the
 * page is no longer live. Read-only: it only ever GETs. No libraries.
 */
(function () {
  "use strict";
  var POLL_MS = 1000;
  var STALE_MS = 5000;
  var main = document.getElementById("live");
  var status = document.getElementById("live-status");
  var url = main ? main.getAttribute("data-live") : null;
  var skew = 0; // the server's clock minus ours
  var shown = null; // the fragment on screen, without its ticking texts
  var lastOk = Date.now();
  var problem = "";

  function pad(n) { return (n < 10 ? "0" : "") + n; }

  // The same wording as daemon/web/render.py: `elapsed` and `_span`.
  function elapsed(ms) {
    var s = Math.max(0, Math.floor(ms / 1000));
    var days = Math.floor(s / 86400);
    s %= 86400;
    var clock = Math.floor(s / 3600) + ":" + pad(Math.floor(s % 3600 / 60)) + ":" + pad(s % 60);
    return days ? days + "d " + clock : clock;
  }

  function span(ms) {
    var s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) { return s + "s"; }
    if (s < 3600) { return Math.floor(s / 60) + "m " + pad(s % 60) + "s"; }
    if (s < 86400) { return Math.floor(s / 3600) + "h " + pad(Math.floor(s % 3600 / 60)) + "m"; }
    return Math.floor(s / 86400) + "d " + Math.floor(s % 86400 / 3600) + "h";
  }

  // What the ticking texts say changes every second; only the rest is news.
  function stable(html) {
    return html.replace(/(data-(?:since|until)="[^"]*">)[^<]*/g, "$1");
  }

  function showStatus() {
    if (!status || !url) { return; }
    var age = Date.now() - lastOk;
    var stale = age > STALE_MS;
    status.className = "live-status " + (stale ? "stale" : "ok");
    status.textContent = stale
      ? "NOT LIVE: no update for " + span(age) + (problem ? " (" + problem + ")" : "")
      : "\u25CF live";
    document.body.classList.toggle("stale", stale);
  }

  function tick() {
    var now = Date.now() + skew;
    var i, el, left;
    var since = document.querySelectorAll("[data-since]");
    for (i = 0; i < since.length; i++) {
      since[i].textContent = elapsed(now - Date.parse(since[i].getAttribute("data-since")));
    }
    var until = document.querySelectorAll("[data-until]");
    for (i = 0; i < until.length; i++) {
      el = until[i];
      left = Date.parse(el.getAttribute("data-until")) - now;
      el.textContent = left >= 0 ? "in " + span(left) : span(-left) + " overdue";
      el.classList.toggle("overdue", left < 0);
    }
    showStatus();
  }

  function poll() {
    fetch(url, { cache: "no-store", credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        var date = Date.parse(response.headers.get("Date") || "");
        // The Date header has whole seconds: half a second is the expected truncation.
        if (!isNaN(date)) { skew = date + 500 - Date.now(); }
        return response.text();
      })
      .then(function (html) {
        lastOk = Date.now();
        problem = "";
        var key = stable(html);
        if (key !== shown) {
          shown = key;
          main.innerHTML = html;
          var root = main.firstElementChild;
          if (root && root.getAttribute("data-title")) {
            document.title = root.getAttribute("data-title");
          }
        }
        tick();
      })
      .catch(function (error) {
        problem = (error && error.message) || "unreachable";
        showStatus();
      })
      .then(function () { window.setTimeout(poll, POLL_MS); });
  }

  if (main) { shown = stable(main.innerHTML); }
  tick();
  window.setInterval(tick, 1000);
  if (url) { poll(); }
}());
