// Live pages: /events says when the files this page shows have changed; the page then
// fetches its own content again and swaps it in place (no reload, scroll kept).
(function () {
  "use strict";
  const main = document.getElementById("main");
  const live = document.getElementById("live");
  if (!main || !window.EventSource) return;
  let busy = false, again = false, source = null;

  function say(text) {
    live.classList.toggle("on", !text);
    live.textContent = text || "live";
  }

  async function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    try {
      const response = await fetch(location.href, {
        headers: { "X-Console-Fragment": "1" }, credentials: "same-origin",
      });
      if (response.status === 401) { say("signed out: open the URL agentmesh ui printed"); stop(); return; }
      if (!response.ok) return;  // a transient error: the next change tries again
      const open = new Set([...main.querySelectorAll("details[open]")].map(indexOf));
      main.innerHTML = await response.text();
      main.dataset.version = response.headers.get("X-Console-Version") || "";
      main.querySelectorAll("details").forEach((d, i) => { if (open.has(i)) d.open = true; });
      document.body.dataset.refreshed = String(Date.now());
    } catch (error) {
      say("console unreachable: is agentmesh ui still running?");
    } finally {
      busy = false;
      if (again) { again = false; refresh(); }
    }
  }

  function indexOf(node) {
    return [...main.querySelectorAll("details")].indexOf(node);
  }

  // The address's own ?home= (none: the console follows the home that changed last).
  const query = new URLSearchParams({ scope: main.dataset.scope || "all" });
  const home = new URLSearchParams(location.search).get("home");
  if (home !== null) query.set("home", home);

  function start() {
    if (source) return;
    source = new EventSource("/events?" + query.toString());
    source.addEventListener("version", (event) => {
      say("");
      if (event.data !== main.dataset.version) {
        main.dataset.version = event.data;
        refresh();
      }
    });
    source.onerror = () => {
      // The browser retries by itself; a closed stream (the console restarted with a
      // new token, or stopped) needs the person.
      if (source && source.readyState === EventSource.CLOSED) {
        say("not live: reload, or open the URL agentmesh ui printed");
        stop();
      } else {
        say("reconnecting…");
      }
    };
  }

  function stop() {
    if (source) { source.close(); source = null; }
  }

  // A hidden tab gives its connection back (browsers allow six per host); when shown
  // again it catches up at once.
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) { stop(); } else { start(); }
  });
  if (!document.hidden) start();
})();
