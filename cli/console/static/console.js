// Live pages: /events says when the files this page shows have changed; the page then
// fetches its own content again and swaps it in place (no reload, scroll kept).
(function () {
  "use strict";
  const main = document.getElementById("main");
  const live = document.getElementById("live");
  if (!main || !window.EventSource) return;
  let busy = false, again = false;

  async function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    try {
      const response = await fetch(location.href, {
        headers: { "X-Console-Fragment": "1" }, credentials: "same-origin",
      });
      if (response.ok) {
        const open = new Set([...main.querySelectorAll("details[open]")].map(pathOf));
        main.innerHTML = await response.text();
        main.dataset.version = response.headers.get("X-Console-Version") || "";
        main.querySelectorAll("details").forEach((d) => { if (open.has(pathOf(d))) d.open = true; });
        document.body.dataset.refreshed = String(Date.now());
      }
    } finally {
      busy = false;
      if (again) { again = false; refresh(); }
    }
  }

  function pathOf(node) {
    const all = [...main.querySelectorAll("details")];
    return all.indexOf(node);
  }

  // The address's own ?home= (none: the console follows the home that changed last).
  const query = new URLSearchParams({ scope: main.dataset.scope || "all" });
  const home = new URLSearchParams(location.search).get("home");
  if (home !== null) query.set("home", home);
  const source = new EventSource("/events?" + query.toString());
  source.addEventListener("version", (event) => {
    live.classList.add("on");
    if (event.data !== main.dataset.version) {
      main.dataset.version = event.data;
      refresh();
    }
  });
  source.onerror = () => live.classList.remove("on");
})();
