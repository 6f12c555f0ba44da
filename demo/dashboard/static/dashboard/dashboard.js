// The showcase dashboard: renders the state the page was served with, then follows two
// WebSockets: /ws/dashboard/ (readings, alerts, tickets, texts, simulator events) and the chat
// room (the Channels tutorial's consumer). Replies are fetch() posts to Django views, with CSRF.
"use strict";

const initial = JSON.parse(document.getElementById("initial").textContent);
const $ = (selector) => document.querySelector(selector);
const COLOURS = ["#0d9488", "#7c3aed", "#d97706", "#2563eb", "#db2777", "#65a30d", "#0891b2", "#9333ea"];
const WINDOW = 60;   // readings per device on the chart

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value; else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function clock(iso) {
  const at = iso ? new Date(iso) : new Date();
  return el("time", {datetime: at.toISOString()}, at.toLocaleTimeString([], {hour: "2-digit", minute: "2-digit", second: "2-digit"}));
}

function csrf() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

async function post(url, fields) {
  const response = await fetch(url, {
    method: "POST", credentials: "same-origin", headers: {"X-CSRFToken": csrf()}, body: new URLSearchParams(fields),
  });
  const answer = await response.json().catch(() => ({error: `HTTP ${response.status}`}));
  if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
  return answer;
}

function bump(id, by = 1) { const node = $(id); node.textContent = String(Number(node.textContent) + by); }

// -- sensors: the chart, the latest value per device, alerts ----------------------------------
const series = new Map();   // device -> [{t, v}]
const colour = new Map();
$("#threshold").textContent = initial.threshold;

function addReading(r, live) {
  if (!series.has(r.device)) { series.set(r.device, []); colour.set(r.device, COLOURS[colour.size % COLOURS.length]); }
  const points = series.get(r.device);
  // readings of one device may be handled side by side and arrive out of order: keep them by time
  const point = {t: Date.parse(r.at), v: r.celsius};
  let at = points.length;
  while (at > 0 && points[at - 1].t > point.t) at--;
  points.splice(at, 0, point);
  if (points.length > WINDOW) points.shift();
  bump("#stat-readings");
  if (live) { drawChart(); drawLegend(); }
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

function drawChart() {
  const chart = $("#chart");
  chart.replaceChildren();
  const all = [...series.values()].flat();
  $("#chart-empty").classList.toggle("hidden", all.length > 0);
  if (!all.length) return;
  const [W, H, left, right, top, bottom] = [720, 240, 44, 12, 12, 26];
  let lo = Math.min(...all.map((p) => p.v)), hi = Math.max(...all.map((p) => p.v));
  if (initial.threshold <= hi + 5 && initial.threshold >= lo - 5) { lo = Math.min(lo, initial.threshold); hi = Math.max(hi, initial.threshold); }
  if (hi - lo < 2) { lo -= 1; hi += 1; }
  const pad = (hi - lo) * 0.1; lo -= pad; hi += pad;
  let t0 = Math.min(...all.map((p) => p.t)), t1 = Math.max(...all.map((p) => p.t));
  if (t1 - t0 < 1000) t0 = t1 - 1000;
  const x = (t) => left + (t - t0) / (t1 - t0) * (W - left - right);
  const y = (v) => top + (hi - v) / (hi - lo) * (H - top - bottom);
  for (let i = 0; i <= 4; i++) {
    const v = lo + (hi - lo) * i / 4;
    chart.append(svg("line", {class: "grid-line", x1: left, x2: W - right, y1: y(v), y2: y(v)}));
    const label = svg("text", {class: "axis-label", x: left - 6, y: y(v) + 4, "text-anchor": "end"});
    label.textContent = `${v.toFixed(1)}°`;
    chart.append(label);
  }
  for (const [t, anchor] of [[t0, "start"], [t1, "end"]]) {
    const label = svg("text", {class: "axis-label", x: x(t), y: H - 6, "text-anchor": anchor});
    label.textContent = new Date(t).toLocaleTimeString([], {hour: "2-digit", minute: "2-digit", second: "2-digit"});
    chart.append(label);
  }
  if (initial.threshold > lo && initial.threshold < hi) {
    chart.append(svg("line", {class: "threshold", x1: left, x2: W - right, y1: y(initial.threshold), y2: y(initial.threshold)}));
  }
  for (const [device, points] of series) {
    const path = points.map((p) => `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(" ");
    chart.append(svg("polyline", {class: "series", points: path, stroke: colour.get(device), "data-device": device}));
    const last = points[points.length - 1];
    chart.append(svg("circle", {cx: x(last.t), cy: y(last.v), r: 3.5, fill: colour.get(device)}));
  }
}

function drawLegend() {
  const items = [...series].map(([device, points]) => {
    const last = points[points.length - 1].v;
    return el("li", {class: last > initial.threshold ? "hot" : "", "data-device": device},
      el("span", {class: "swatch", style: `background:${colour.get(device)}`}), el("span", {}, device),
      el("span", {class: "value"}, `${last.toFixed(1)} °C`));
  });
  $("#latest").replaceChildren(...items);
}

function addAlert(a) {
  $("#alerts").prepend(el("li", {}, `⚠ ${a.device} at ${Number(a.celsius).toFixed(1)} °C`, clock(a.at)));
}

// -- tickets ------------------------------------------------------------------------------------
function replyItem(r) {
  return el("li", {"data-reply": r.id}, el("span", {class: "author"}, `${r.author}:`), r.body, clock(r.at));
}

function ticketItem(t, fresh) {
  const replies = el("ul", {class: "replies"}, ...t.replies.map(replyItem));
  const item = el("li", {class: `ticket${fresh ? " fresh" : ""}`, "data-id": t.id},
    el("div", {}, el("span", {class: "number-tag"}, `#${t.id}`), el("span", {class: "subject"}, t.subject || "(no subject)")),
    el("div", {class: "from"}, t.sender, clock(t.at)),
    el("div", {class: "body"}, t.body.trim()), replies);
  if (initial.canReply) {
    const input = el("input", {placeholder: `Reply to ${t.sender}…`, class: "reply-input", maxlength: "2000"});
    const button = el("button", {class: "button small", type: "submit"}, "Reply");
    const form = el("form", {class: "inline-form reply-form"}, input, button);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      if (!input.value.trim()) return;
      button.disabled = true;
      try { await post(`/tickets/${t.id}/reply/`, {body: input.value}); input.value = ""; }
      catch (error) { alert(`Not sent: ${error.message}`); }
      finally { button.disabled = false; }
    });
    item.append(form);
  }
  return item;
}

function addTicket(t, live) {
  if (document.querySelector(`.ticket[data-id="${t.id}"]`)) return;
  $("#ticket-list").prepend(ticketItem(t, live));
  $("#tickets-empty").classList.add("hidden");
  bump("#stat-tickets");
}

function addTicketReply(r) {
  const list = document.querySelector(`.ticket[data-id="${r.ticket}"] .replies`);
  if (list && !list.querySelector(`[data-reply="${r.id}"]`)) list.append(replyItem(r));
}

// -- texts: one conversation per number, newest on top -------------------------------------------
function conversation(number) {
  let item = [...document.querySelectorAll(".conversation")].find((c) => c.dataset.number === number);
  if (!item) {
    item = el("div", {class: "conversation", "data-number": number}, el("div", {class: "number"}, number), el("div", {class: "bubbles"}));
    if (initial.canReply) {
      const input = el("input", {placeholder: `Text ${number}…`, class: "reply-input", maxlength: "300"});
      const button = el("button", {class: "button small", type: "submit"}, "Send");
      const form = el("form", {class: "inline-form reply-form"}, input, button);
      form.addEventListener("submit", async (event) => {
        event.preventDefault();
        if (!input.value.trim()) return;
        button.disabled = true;
        try { await post("/texts/reply/", {number, body: input.value}); input.value = ""; }
        catch (error) { alert(`Not sent: ${error.message}`); }
        finally { button.disabled = false; }
      });
      item.append(form);
    }
  }
  $("#conversations").prepend(item);   // the latest conversation first
  return item;
}

function addText(t, live) {
  const item = conversation(t.number);
  if (item.querySelector(`[data-text="${t.id}"]`)) return;
  const who = t.direction === "in" ? "" : `${t.author} · `;
  item.querySelector(".bubbles").append(el("div", {class: `bubble ${t.direction}`, "data-text": t.id}, t.body,
    el("span", {class: "meta"}, who, clock(t.at))));
  if (live) { item.classList.remove("fresh"); void item.offsetWidth; item.classList.add("fresh"); }
  $("#texts-empty").classList.add("hidden");
  bump("#stat-texts");
}

// -- the chat room: the Channels tutorial's protocol ({"message": ...} both ways) ----------------
let chatSocket = null;
function addChat(text, live) {
  const log = $("#chat-log");
  log.append(el("li", {class: live ? "fresh" : ""}, text, clock()));
  log.scrollTop = log.scrollHeight;
  bump("#stat-chat");
}

$("#chat-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = $("#chat-input");
  if (input.value.trim() && chatSocket && chatSocket.readyState === WebSocket.OPEN) {
    chatSocket.send(JSON.stringify({message: input.value}));
    input.value = "";
  }
});

// -- simulators (local run): the phone and the customer's mailbox ----------------------------------
function phoneBubble(text, mine, screen = $("#phone-screen")) {
  screen.querySelector("p")?.remove();
  screen.append(el("div", {class: `bubble ${mine ? "mine" : "theirs"}`}, text));
  screen.scrollTop = screen.scrollHeight;
}

if ($("#phone-form")) {
  $("#phone-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = $("#phone-body").value;
    if (!body.trim()) return;
    const response = await fetch("/phone/send", {method: "POST", headers: {"content-type": "application/json"},
      body: JSON.stringify({from: $("#phone-from").value, body})});
    if (response.ok) { phoneBubble(body, true); $("#phone-body").value = ""; }
    else alert(`The webhook refused the text (HTTP ${response.status})`);
  });
  $("#mail-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = $("#mail-send");
    button.disabled = true;
    try { await post("/mailbox/send/", {from: $("#mail-from").value, subject: $("#mail-subject").value, body: $("#mail-body").value}); }
    catch (error) { alert(`Not sent: ${error.message}`); }
    finally { button.disabled = false; }
  });
}

function addMail(m) {
  const box = $("#mailbox");
  box.querySelector(".muted")?.remove();
  box.prepend(el("li", {}, el("div", {class: "subject"}, m.subject), el("div", {class: "muted"}, `to ${m.to}, from ${m.from}`),
    el("div", {}, m.body.trim())));
}

// -- the live feeds ---------------------------------------------------------------------------
const handlers = {
  reading: (d) => addReading(d, true),
  alert: addAlert,
  ticket: (d) => addTicket(d, true),
  ticket_reply: addTicketReply,
  text: (d) => addText(d, true),
  phone: (d) => {   // a text the SMS adapter sent: to the customer's phone, or the alerts bridge's to on-call
    if (d.to === $("#phone-from")?.value) phoneBubble(d.body, false);
    else if (d.to === initial.oncallPhone && $("#oncall-screen")) phoneBubble(d.body, false, $("#oncall-screen"));
  },
  mail: (d) => { if ($("#mailbox")) addMail(d); },
};

function connect(path, onMessage, onOpen) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  let delay = 500;
  const open = () => {
    const socket = new WebSocket(`${scheme}://${location.host}${path}`);
    socket.onopen = () => { delay = 500; onOpen(socket, true); };
    socket.onmessage = (event) => onMessage(JSON.parse(event.data));
    socket.onclose = () => { onOpen(socket, false); setTimeout(open, delay); delay = Math.min(delay * 2, 10000); };
  };
  open();
}

const state = {feed: false, chat: false};
function showState() {
  const live = state.feed && state.chat;
  $("#live").textContent = live ? "live" : "reconnecting…";
  $("#live").className = `pill ${live ? "pill-live" : "pill-wait"}`;
}

connect("/ws/dashboard/", (m) => handlers[m.kind]?.(m.data), (_, up) => { state.feed = up; showState(); });
connect(`/ws/chat/${initial.room}/`, (m) => { if ("message" in m) addChat(m.message, true); },
  (socket, up) => { chatSocket = up ? socket : null; state.chat = up; showState(); });

// -- what the page was served with --------------------------------------------------------------
initial.readings.forEach((r) => { addReading(r, false); if (r.celsius > initial.threshold) addAlert(r); });
drawChart(); drawLegend();
[...initial.tickets].reverse().forEach((t) => addTicket(t, false));
initial.texts.forEach((t) => addText(t, false));
initial.chat.forEach((text) => addChat(text, false));
