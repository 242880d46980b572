// Renders the daemon's tiles. Every value is set as textContent: a camera's officer name is data, not markup.
"use strict";

function eta(seconds) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds < 60) return "under a minute left";
  return "about " + Math.ceil(seconds / 60) + " min left";
}

function add(parent, tag, className, text) {
  const element = document.createElement(tag);
  element.className = className;
  if (text !== undefined && text !== null) element.textContent = String(text);
  parent.appendChild(element);
  return element;
}

function tile(bay) {
  const article = document.createElement("article");
  article.className = "tile";
  article.dataset.phase = bay.phase;
  const header = add(article, "header", "");
  add(header, "h2", "name", bay.name);
  if (bay.battery_percent !== null) add(header, "span", "battery", "battery " + bay.battery_percent + " %");
  if (bay.officer !== null) add(article, "p", "officer", bay.officer);
  if (bay.serial !== null) add(article, "p", "serial", bay.serial);
  if (bay.phase !== "safe") add(article, "p", "words", bay.words);
  if (bay.percent !== null) {
    const bar = add(article, "div", "bar");
    bar.setAttribute("role", "progressbar");
    bar.setAttribute("aria-valuenow", String(bay.percent));
    add(bar, "div", "fill").style.width = Math.max(0, Math.min(100, bay.percent)) + "%";
    const parts = [Math.floor(bay.percent) + " %"];
    if (bay.files_total) parts.push(bay.files_done + " of " + bay.files_total + " files");
    if (bay.phase === "working" && bay.eta_s !== null) parts.push(eta(bay.eta_s));
    add(article, "p", "detail", parts.join(" · "));
  }
  if (bay.phase === "safe") add(article, "p", "undock", bay.words);
  return article;
}

function render(snapshot) {
  const bays = document.getElementById("bays");
  bays.replaceChildren(...snapshot.tiles.map(tile));
  bays.className = "";
  const link = document.getElementById("link");
  link.className = "";
  link.textContent = "updated " + new Date(snapshot.at).toLocaleTimeString();
}

function connect() {
  const events = new EventSource("/events");
  events.onmessage = (message) => render(JSON.parse(message.data));
  events.onerror = () => {
    // What the tiles say may be out of date: grey them until the station answers again.
    document.getElementById("bays").className = "stale";
    const link = document.getElementById("link");
    link.className = "lost";
    link.textContent = "connection to the station lost: reconnecting…";
  };
}

connect();
