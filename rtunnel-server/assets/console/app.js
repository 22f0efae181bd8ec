// The rtunnel console: everything operators and admins do, over the public
// API only.
//
// Signed in with a cookie (POST /api/v1/auth/login with "cookie": true):
// the tokens live in HttpOnly cookies the page never sees; changes carry
// the rtunnel_csrf cookie's value as X-CSRF-Token; an expired access
// cookie is renewed once through POST /api/v1/auth/refresh. Live changes
// come from GET /api/v1/events. Every path is relative to where the page
// is served, so the console works under a path prefix.
//
// Nothing here writes HTML from data: every value goes in as text.
"use strict";
(function () {
  const base = location.pathname.replace(/\/console(\/.*)?$/, "");
  const state = {
    me: null,
    view: null,
    events: null,
    eventsOpen: false,
    terminals: [],
    lastError: null,
  };
  window.rtunnelConsole = state;

  // ---- DOM -------------------------------------------------------------

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "text") el.textContent = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (k === "dataset") Object.assign(el.dataset, v);
      else if (v === true) el.setAttribute(k, "");
      else el.setAttribute(k, v);
    }
    for (const c of children.flat()) {
      if (c === undefined || c === null || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  function when(text) {
    if (!text) return "";
    const d = new Date(text);
    return isNaN(d) ? text : d.toLocaleString();
  }

  function badge(status) {
    return h("span", { class: "badge status-" + status, text: status.replace("_", " ") });
  }

  let sayTimer = null;
  function say(text) {
    const live = document.getElementById("live");
    live.textContent = text;
    clearTimeout(sayTimer);
    sayTimer = setTimeout(() => (live.textContent = ""), 4000);
  }

  function errorBox(e) {
    state.lastError = e && e.message;
    return h("p", { class: "error", role: "alert", text: e && e.message ? e.message : String(e) });
  }

  function isAdmin() {
    return state.me && state.me.role === "admin";
  }

  function canConnect() {
    return state.me && (state.me.role === "admin" || state.me.role === "operator");
  }

  function table(headers, rows, empty) {
    if (!rows.length) return h("p", { class: "empty", text: empty || "Nothing here yet." });
    return h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        {},
        h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col", text: t })))),
        h("tbody", {}, rows)
      )
    );
  }

  function pager(page, onGo) {
    const pages = Math.max(1, Math.ceil(page.total / page.page_size));
    return h(
      "nav",
      { class: "pager", "aria-label": "Pages" },
      h("button", { type: "button", disabled: page.page <= 1, onclick: () => onGo(page.page - 1), text: "Previous" }),
      h("span", { text: "Page " + page.page + " of " + pages + " (" + page.total + ")" }),
      h("button", { type: "button", disabled: page.page >= pages, onclick: () => onGo(page.page + 1), text: "Next" })
    );
  }

  // A form whose submit runs `action`; errors show in the form.
  function form(attrs, fields, label, action) {
    const err = h("p", { class: "error", role: "alert" });
    const f = h("form", attrs, fields, h("button", { type: "submit", class: "primary", text: label }), err);
    f.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      err.textContent = "";
      const button = f.querySelector("button[type=submit]");
      button.disabled = true;
      try {
        await action(new FormData(f), f);
      } catch (e) {
        err.textContent = e.message;
        state.lastError = e.message;
      } finally {
        button.disabled = false;
      }
    });
    return f;
  }

  function field(label, input) {
    return h("label", {}, label, " ", input);
  }

  // Asks for values in a modal dialog; resolves to the form's data, or
  // null when cancelled. `action` runs on submit; its error keeps the
  // dialog open with the message.
  function ask(title, inputs, label, action) {
    return new Promise((resolve) => {
      const err = h("p", { class: "error", role: "alert" });
      const cancel = h("button", { type: "button", text: "Cancel" });
      const f = h(
        "form",
        { method: "dialog" },
        h("h2", { text: title }),
        inputs.map(([l, input]) => field(l, input)),
        h("div", { class: "dialog-buttons" }, cancel, h("button", { type: "submit", class: "primary", text: label })),
        err
      );
      const d = h("dialog", { "aria-label": title }, f);
      document.body.append(d);
      const done = (value) => {
        d.close();
        d.remove();
        resolve(value);
      };
      cancel.addEventListener("click", () => done(null));
      d.addEventListener("cancel", () => done(null));
      f.addEventListener("submit", async (ev) => {
        ev.preventDefault();
        err.textContent = "";
        const data = new FormData(f);
        try {
          await action(data);
          done(data);
        } catch (e) {
          err.textContent = e.message;
        }
      });
      d.showModal();
      const first = f.querySelector("input, select");
      if (first) first.focus();
    });
  }

  // A value shown once (a secret, a token), with a copy button.
  function secretBox(title, pairs) {
    return h(
      "div",
      { class: "card secret", role: "alert" },
      h("h2", { text: title }),
      h("p", { text: "Copy it now: it is shown only this once." }),
      pairs.map(([k, v]) => h("div", { class: "copyline" }, h("span", { class: "k", text: k }), code(v)))
    );
  }

  function code(text) {
    const c = h("code", { text: text, tabindex: "0" });
    const b = h("button", {
      type: "button",
      class: "copy",
      text: "Copy",
      "aria-label": "Copy to the clipboard",
      onclick: async () => {
        try {
          await navigator.clipboard.writeText(text);
          b.textContent = "Copied";
        } catch (_) {
          const range = document.createRange();
          range.selectNodeContents(c);
          const sel = getSelection();
          sel.removeAllRanges();
          sel.addRange(range);
          b.textContent = "Press Ctrl+C";
        }
        setTimeout(() => (b.textContent = "Copy"), 2000);
      },
    });
    return h("span", { class: "code" }, c, b);
  }

  // ---- API -------------------------------------------------------------

  class ApiError extends Error {
    constructor(message, code, status) {
      super(message);
      this.code = code;
      this.status = status;
    }
  }

  function csrf() {
    const m = document.cookie.match(/(?:^|;\s*)(?:__Host-)?rtunnel_csrf=([^;]*)/);
    return m ? m[1] : "";
  }

  // One refresh at a time, across every tab of the console: a refresh
  // token is single use, and two tabs presenting it together would look
  // like a stolen copy (the server then ends the login). A tab that waited
  // for another's refresh finds its cookies renewed and does not refresh.
  let refreshing = null;
  function refresh() {
    if (!refreshing) {
      const once = async () => {
        const me = await fetch(base + "/api/v1/auth/me", { credentials: "same-origin" }).catch(() => null);
        if (me && me.ok) return true;
        const r = await fetch(base + "/api/v1/auth/refresh", {
          method: "POST",
          headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
          body: "{}",
          credentials: "same-origin",
        }).catch(() => null);
        return !!(r && r.ok);
      };
      const locked = navigator.locks ? navigator.locks.request("rtunnel-console-refresh", once) : once();
      refreshing = Promise.resolve(locked)
        .catch(() => false)
        .finally(() => setTimeout(() => (refreshing = null), 0));
    }
    return refreshing;
  }

  async function api(method, path, body) {
    const send = () => {
      const opts = { method, headers: {}, credentials: "same-origin" };
      if (method !== "GET") opts.headers["X-CSRF-Token"] = csrf();
      if (body !== undefined) {
        opts.headers["Content-Type"] = "application/json";
        opts.body = JSON.stringify(body);
      }
      return fetch(base + path, opts);
    };
    let resp = await send();
    if (resp.status === 401 && !path.startsWith("/api/v1/auth/") && (await refresh())) {
      resp = await send();
    }
    if (resp.status === 204) return null;
    const data = await resp.json().catch(() => null);
    if (resp.status === 401 && !path.startsWith("/api/v1/auth/login")) {
      signedOut("Your sign-in ended; sign in again.");
    }
    if (!resp.ok) {
      const message = data && data.error ? data.error : "the server answered HTTP " + resp.status;
      throw new ApiError(message, data && data.code, resp.status);
    }
    return data;
  }

  // Names of systems, for lists that show ids.
  const systemNames = new Map();
  async function loadSystemNames() {
    const page = await api("GET", "/api/v1/systems?page_size=100");
    systemNames.clear();
    for (const s of page.items) systemNames.set(s.id, s.name);
    return page.items;
  }
  function systemName(id) {
    return systemNames.get(id) || id.slice(0, 8);
  }

  // ---- sign-in ---------------------------------------------------------

  function signedOut(message) {
    state.me = null;
    stopEvents();
    document.querySelector("header.top").hidden = true;
    document.getElementById("view").replaceChildren();
    document.getElementById("terminals").hidden = true;
    const f = document.getElementById("sign-in");
    f.hidden = false;
    document.getElementById("sign-in-error").textContent = message || "";
    f.querySelector("input[name=username]").focus();
  }

  async function signedIn(me) {
    state.me = me;
    document.getElementById("sign-in").hidden = true;
    const header = document.querySelector("header.top");
    header.hidden = false;
    document.getElementById("who").textContent = me.name + " (" + me.role + ")";
    for (const a of header.querySelectorAll("[data-admin]")) a.hidden = me.role !== "admin";
    header.querySelector("[data-nav=terminals]").hidden = me.role === "viewer";
    startEvents();
    if (!location.hash || location.hash === "#" || location.hash === "#/") {
      location.replace("#/sessions");
    }
    await route();
  }

  document.getElementById("sign-in").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = ev.target;
    const err = document.getElementById("sign-in-error");
    err.textContent = "";
    const data = new FormData(f);
    try {
      const answer = await api("POST", "/api/v1/auth/login", {
        username: data.get("username"),
        password: data.get("password"),
        cookie: true,
      });
      f.reset();
      await signedIn(answer.user);
    } catch (e) {
      err.textContent = e.message;
    }
  });

  document.getElementById("sign-out").addEventListener("click", async () => {
    try {
      await api("POST", "/api/v1/auth/logout");
    } catch (_) {
      // Signed out either way.
    }
    for (const t of state.terminals.slice()) closeTerminal(t);
    signedOut("Signed out.");
  });

  // ---- live changes ----------------------------------------------------

  let changeTimer = null;
  function startEvents() {
    stopEvents();
    const es = new EventSource(base + "/api/v1/events");
    state.events = es;
    const onChange = (ev) => {
      let data = null;
      try {
        data = JSON.parse(ev.data);
      } catch (_) {
        data = { type: ev.type };
      }
      clearTimeout(changeTimer);
      changeTimer = setTimeout(() => state.view && state.view.onChange && state.view.onChange(data), 150);
    };
    es.addEventListener("session", onChange);
    es.addEventListener("system", onChange);
    es.addEventListener("resync", onChange);
    es.onopen = () => (state.eventsOpen = true);
    es.onerror = async () => {
      state.eventsOpen = false;
      if (es.readyState === EventSource.CLOSED && state.me) {
        // Refused (an expired access cookie): renew it, then listen again.
        if (await refresh()) setTimeout(() => state.me && startEvents(), 1000);
      }
    };
  }

  function stopEvents() {
    if (state.events) state.events.close();
    state.events = null;
    state.eventsOpen = false;
  }

  // ---- routing ---------------------------------------------------------

  const UUID = "([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})";
  const routes = [
    [/^#\/sessions$/, "sessions", viewSessions],
    [new RegExp("^#/sessions/" + UUID + "$"), "sessions", viewSession],
    [/^#\/systems$/, "systems", viewSystems],
    [/^#\/terminals$/, "terminals", viewTerminals],
    [new RegExp("^#/recordings/" + UUID + "$"), "sessions", viewRecording],
    [/^#\/tokens$/, "tokens", viewTokens],
    [/^#\/users$/, "users", viewUsers],
    [/^#\/grants$/, "grants", viewGrants],
    [/^#\/resources$/, "resources", viewResources],
    [/^#\/audit$/, "audit", viewAudit],
  ];

  let routeGeneration = 0;
  async function route() {
    if (!state.me) return;
    const generation = ++routeGeneration;
    const hash = location.hash.split("?")[0];
    const found = routes.find(([re]) => re.test(hash));
    const view = document.getElementById("view");
    if (!found) {
      location.replace("#/sessions");
      return;
    }
    const [re, nav, fn] = found;
    for (const a of document.querySelectorAll("[data-nav]")) {
      if (a.dataset.nav === nav) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    placeTerminals();
    document.getElementById("terminals").hidden = nav !== "terminals";
    if (state.view && state.view.leave) state.view.leave();
    state.view = null;
    const el = h("div", { class: "page" });
    view.replaceChildren(el);
    try {
      const view = (await fn(el, ...re.exec(hash).slice(1))) || {};
      // Another page may have been opened meanwhile.
      if (generation === routeGeneration) state.view = view;
      else if (view.leave) view.leave();
    } catch (e) {
      el.append(errorBox(e));
    }
  }

  window.addEventListener("hashchange", route);

  // ---- sessions --------------------------------------------------------

  const STATUSES = ["pending", "active", "grace_period", "expired", "closed"];

  async function viewSessions(el) {
    const systems = await loadSystemNames();
    const params = new URLSearchParams(location.hash.split("?")[1] || "");
    const status = h(
      "select",
      { name: "status", id: "filter-status" },
      h("option", { value: "", text: "any status" }),
      STATUSES.map((s) => h("option", { value: s, text: s.replace("_", " ") }))
    );
    status.value = params.get("status") || "";
    const system = h(
      "select",
      { name: "system_id", id: "filter-system" },
      h("option", { value: "", text: "any system" }),
      systems.map((s) => h("option", { value: s.id, text: s.name }))
    );
    system.value = params.get("system_id") || "";
    const list = h("div", { id: "session-list" });
    let page = 1;
    const load = async () => {
      const q = new URLSearchParams({ page: String(page), page_size: "25" });
      if (status.value) q.set("status", status.value);
      if (system.value) q.set("system_id", system.value);
      try {
        const data = await api("GET", "/api/v1/sessions?" + q);
        const rows = data.items.map((s) =>
          h(
            "tr",
            { dataset: { session: s.id, status: s.status } },
            h("td", {}, h("a", { href: "#/sessions/" + s.id, text: systemName(s.system_id) })),
            h("td", {}, badge(s.status)),
            h("td", { text: when(s.created_at) }),
            h("td", { text: s.status === "grace_period" ? "back by " + when(s.grace_until) : when(s.expires_at) }),
            h("td", { text: s.agent_software || "" }),
            h("td", { text: String(s.services.length) })
          )
        );
        list.replaceChildren(
          table(["System", "Status", "Started", "Expires", "Agent", "Services"], rows, "No session matches."),
          data.total > data.page_size ? pager(data, (p) => ((page = p), load())) : ""
        );
      } catch (e) {
        list.replaceChildren(errorBox(e));
      }
    };
    const refilter = () => {
      page = 1;
      const q = new URLSearchParams();
      if (status.value) q.set("status", status.value);
      if (system.value) q.set("system_id", system.value);
      history.replaceState(null, "", "#/sessions" + (q.toString() ? "?" + q : ""));
      load();
    };
    status.addEventListener("change", refilter);
    system.addEventListener("change", refilter);
    el.append(
      h("h1", { text: "Sessions" }),
      h("div", { class: "filters" }, field("Status", status), field("System", system)),
      list
    );
    await load();
    return { onChange: load };
  }

  async function viewSession(el, id) {
    const head = h("div");
    const actions = h("div", { class: "actions" });
    const services = h("section", { "aria-labelledby": "services-h" });
    const logs = h("section", { "aria-labelledby": "logs-h" });
    const recordings = h("section", { "aria-labelledby": "recordings-h" });
    const forwardBox = h("div", { id: "forward-box" });
    const live = h("section", { id: "live-terminals", "aria-labelledby": "live-h" });
    el.append(h("p", {}, h("a", { href: "#/sessions", text: "← Sessions" })), head, actions, services, live, forwardBox, logs, recordings);
    let session = null;

    const load = async () => {
      session = await api("GET", "/api/v1/sessions/" + id);
      if (!systemNames.has(session.system_id)) await loadSystemNames().catch(() => {});
      const final = session.status === "expired" || session.status === "closed";
      head.replaceChildren(
        h("h1", {}, "Session on ", systemName(session.system_id), " ", badge(session.status)),
        h(
          "dl",
          { class: "facts" },
          fact("Session", session.id),
          fact("Started", when(session.created_at)),
          fact("Active since", when(session.activated_at)),
          fact(final ? "Ended" : "Expires", final ? when(session.ended_at) : when(session.expires_at)),
          session.grace_until && !final ? fact("Agent expected back by", when(session.grace_until)) : "",
          session.end_reason ? fact("End reason", session.end_reason) : "",
          fact("Agent", (session.agent_software || "") + (session.agent_addr ? " from " + session.agent_addr : "")),
          session.node_id ? fact("Server node", session.node_id) : ""
        )
      );
      actions.replaceChildren();
      if (canConnect() && !final) {
        const hours = h("input", { type: "number", name: "hours", min: "1", max: "720", value: "1", class: "short" });
        actions.append(
          form({ class: "inline", "aria-label": "Extend the session" }, [field("Extend by hours", hours)], "Extend", async () => {
            await api("PATCH", "/api/v1/sessions/" + id + "/extend", { hours: Number(hours.value) });
            say("Session extended.");
            await load();
          }),
          h("button", {
            type: "button",
            class: "danger",
            id: "close-session",
            text: "Close session",
            onclick: async () => {
              if (!confirm("Close this session? The agent's tunnel ends and everyone connected is cut.")) return;
              try {
                await api("DELETE", "/api/v1/sessions/" + id);
                say("Session closed.");
                await load();
              } catch (e) {
                actions.append(errorBox(e));
              }
            },
          })
        );
      }
      const asks = session.services.some((s) => s.consent === "approve");
      const tells = session.services.some((s) => s.consent === "notify");
      services.replaceChildren(
        h("h2", { id: "services-h", text: "Services" }),
        asks
          ? h("p", {
              class: "note consent",
              text: "The customer approves each operator's first access to this system: opening a service waits for their answer.",
            })
          : tells
            ? h("p", { class: "note consent", text: "The customer is told when an operator first comes in." })
            : "",
        table(
          ["Service", "Kind", "Target", ""],
          session.services.map((s) =>
            h(
              "tr",
              { dataset: { service: s.name } },
              h("td", { text: s.name }),
              h("td", { text: s.kind + (s.tls ? " (TLS)" : "") }),
              h("td", { text: s.target || "" }),
              h("td", {}, canConnect() && !final ? openButton(session, s) : "")
            )
          ),
          final ? "The session has ended." : "The agent offers no service."
        )
      );
      await loadLiveTerminals(final);
      await loadLogs(1);
      if (isAdmin()) await loadRecordings();
    };

    // Terminals the agent keeps: attach again after a reload, or watch.
    const loadLiveTerminals = async (final) => {
      const terminal = session.services.find((s) => s.kind === "terminal");
      if (final || !terminal || !terminal.shared || session.status !== "active") {
        live.replaceChildren();
        return;
      }
      let items = [];
      try {
        items = (await api("GET", "/api/v1/sessions/" + id + "/terminals")).items;
      } catch (e) {
        live.replaceChildren(h("h2", { id: "live-h", text: "Live terminals" }), errorBox(e));
        return;
      }
      const who = (t) =>
        t.participants.length
          ? t.participants.map((p) => p.name + (p.mode === "watch" ? " (watching)" : "")).join(", ")
          : "nobody: detached, waiting to be attached";
      live.replaceChildren(
        h(
          "h2",
          { id: "live-h" },
          "Live terminals ",
          h("button", { type: "button", class: "refresh", text: "Refresh", onclick: () => loadLiveTerminals(false) })
        ),
        table(
          ["Started by", "Since", "Who is in it", ""],
          items.map((t) =>
            h(
              "tr",
              { dataset: { terminal: t.id } },
              h("td", { text: t.started_by }),
              h("td", { text: t.since || "" }),
              h("td", { text: who(t) }),
              h(
                "td",
                {},
                canConnect()
                  ? h("button", {
                      type: "button",
                      class: "attach",
                      text: "Attach",
                      onclick: (ev) =>
                        openTerminal(id, systemName(session.system_id), ev.target, terminal.consent, { attach: t.id, mode: "join" }),
                    })
                  : "",
                " ",
                h("button", {
                  type: "button",
                  class: "watch",
                  text: "Watch",
                  onclick: (ev) =>
                    openTerminal(id, systemName(session.system_id), ev.target, terminal.consent, { attach: t.id, mode: "watch" }),
                })
              )
            )
          ),
          "No terminal is open on this system."
        )
      );
    };

    const loadLogs = async (page) => {
      const data = await api("GET", "/api/v1/sessions/" + id + "/logs?page_size=20&page=" + page);
      logs.replaceChildren(
        h("h2", { id: "logs-h", text: "Access log" }),
        table(
          ["Opened", "Closed", "Who", "Kind", "Service", "From", "Bytes in / out", "Error"],
          data.items.map((a) =>
            h(
              "tr",
              {},
              h("td", { text: when(a.opened_at) }),
              h("td", { text: when(a.closed_at) }),
              h("td", { text: a.user }),
              h("td", { text: a.kind }),
              h("td", { text: a.service || "" }),
              h("td", { text: a.ip_address || "" }),
              h("td", { text: a.bytes_to_service + " / " + a.bytes_from_service }),
              h("td", { text: a.error || "" })
            )
          ),
          "Nobody has connected yet."
        ),
        data.total > data.page_size ? pager(data, loadLogs) : ""
      );
    };

    const loadRecordings = async () => {
      const data = await api("GET", "/api/v1/sessions/" + id + "/recordings");
      const items = data.items;
      recordings.replaceChildren(
        h("h2", { id: "recordings-h", text: "Terminal recordings" }),
        table(
          ["Started", "Operator", "Size", ""],
          items.map((r) =>
            h(
              "tr",
              {},
              h("td", { text: when(r.started_at) }),
              h("td", { text: r.actor }),
              h("td", { text: r.bytes + " bytes" + (r.truncated ? " (truncated)" : "") }),
              h(
                "td",
                {},
                h("a", { href: "#/recordings/" + r.id + "?session=" + id, text: "Play" }),
                " ",
                h("a", { href: base + "/api/v1/recordings/" + r.id, download: "recording-" + r.id + ".cast", text: "Download" })
              )
            )
          ),
          "No terminal was recorded."
        )
      );
    };

    function openButton(session, s) {
      if (s.kind === "terminal") {
        const open = h("button", {
          type: "button",
          class: "primary",
          text: "Open terminal",
          onclick: (ev) => openTerminal(session.id, systemName(session.system_id), ev.target, s.consent),
        });
        if (!s.shared) return open;
        // One person types at a time; control is handed over.
        const moderated = h("button", {
          type: "button",
          class: "moderated",
          text: "Open moderated",
          title: "One participant at a time types; control is handed over",
          onclick: (ev) =>
            openTerminal(session.id, systemName(session.system_id), ev.target, s.consent, { moderated: true }),
        });
        return [open, " ", moderated];
      }
      // Any other service may be a web UI (through the subdomain proxy)
      // or anything else (through a local port).
      const web = h("button", {
        type: "button",
        class: "primary web",
        text: "Open in browser",
        onclick: async (ev) => {
          const tab = window.open("about:blank", "_blank");
          try {
            const grant = await api("POST", "/api/v1/sessions/" + session.id + "/proxy-token", { service: s.name });
            if (s.consent === "approve") {
              ev.target.after(h("span", { class: "note waiting", text: " waiting for the customer's approval in the new tab" }));
            }
            if (tab) {
              tab.opener = null;
              tab.location = grant.url;
            } else {
              ev.target.after(h("a", { href: grant.url, target: "_blank", rel: "noopener", text: " open " + s.name }));
            }
          } catch (e) {
            if (tab) tab.close();
            ev.target.after(errorBox(e));
          }
        },
      });
      const forward = h("button", {
        type: "button",
        class: "forward",
        text: "Forward a port",
        onclick: () => showForward(session, s),
      });
      return s.kind === "http" ? web : [web, " ", forward];
    }

    function showForward(session, s) {
      const port = 10000 + Math.floor(Math.random() * 20000);
      const server = location.origin + base;
      const command =
        "rtunnel-agent forward --server " + server + " --session " + session.id + " --service " + s.name +
        " --listen 127.0.0.1:" + port;
      forwardBox.replaceChildren(
        h(
          "div",
          { class: "card" },
          h("h2", { text: "Reach " + s.name + " from your machine" }),
          h("p", { text: "With an API token in RTUNNEL_TOKEN (make one under API tokens), run:" }),
          code(command),
          h("p", { text: "then connect your client (ssh, RDP, a database tool) to 127.0.0.1:" + port + "." })
        )
      );
      forwardBox.scrollIntoView({ block: "nearest" });
    }

    await load();
    return {
      onChange: (change) => {
        if (change.type === "resync" || change.id === id) load().catch(() => {});
      },
    };
  }

  function fact(k, v) {
    return [h("dt", { text: k }), h("dd", { text: v || "—" })];
  }

  // ---- terminals -------------------------------------------------------

  async function openTerminal(sessionId, label, button, consent, share) {
    share = share || {};
    let ticket;
    try {
      ticket = (await api("POST", "/api/v1/sessions/" + sessionId + "/terminal-ticket")).ticket;
    } catch (e) {
      if (button) button.after(errorBox(e));
      return;
    }
    const n = state.terminals.filter((t) => t.session === sessionId).length + 1;
    const t = {
      id: "t" + Date.now(),
      session: sessionId,
      label: label + (n > 1 ? " #" + n : "") + (share.mode === "watch" ? " (watching)" : ""),
      status: "connecting",
      participants: [],
    };
    const status = h("span", { class: "term-status", text: "connecting" });
    const close = h("button", { type: "button", class: "tab-close", "aria-label": "Close " + t.label, text: "×" });
    t.tab = h(
      "div",
      { class: "tab", role: "tab", tabindex: "0", "aria-controls": t.id, dataset: { terminal: t.id } },
      h("span", { text: t.label }),
      status,
      close
    );
    t.pane = h("div", { class: "pane", role: "tabpanel", id: t.id });
    t.term = new Terminal({ cursorBlink: true, scrollback: 5000, fontFamily: "ui-monospace, Menlo, Consolas, monospace" });
    t.fit = new FitAddon.FitAddon();
    t.term.loadAddon(t.fit);
    t.setStatus = (s, text) => {
      t.status = s;
      status.textContent = text;
      status.dataset.state = s;
    };
    t.tab.addEventListener("click", (ev) => {
      if (ev.target !== close) selectTerminal(t);
    });
    t.tab.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" || ev.key === " ") selectTerminal(t);
    });
    close.addEventListener("click", () => closeTerminal(t));
    document.getElementById("terminal-tabs").append(t.tab);
    document.getElementById("terminal-panes").append(t.pane);
    state.terminals.push(t);
    updateTerminalCount();
    // Keystrokes go to the new terminal, not to the button that opened it.
    if (document.activeElement) document.activeElement.blur();
    location.hash = "#/terminals";
    placeTerminals();
    document.getElementById("terminals").hidden = false;
    selectTerminal(t);
    t.term.open(t.pane);
    t.fit.fit();
    const asking = consent === "approve";
    if (asking) t.setStatus("waiting", "waiting for the customer's approval");
    if (share.mode === "watch") t.term.options.disableStdin = true;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const url =
      scheme + "://" + location.host + base + "/api/v1/sessions/" + sessionId + "/terminal?ticket=" +
      encodeURIComponent(ticket) + "&cols=" + t.term.cols + "&rows=" + t.term.rows + "&events=true" +
      (share.attach ? "&attach=" + encodeURIComponent(share.attach) : "") +
      (share.mode ? "&mode=" + encodeURIComponent(share.mode) : "") +
      (share.moderated ? "&moderated=true" : "");
    t.mode = share.mode || "join";
    const ws = new WebSocket(url);
    t.ws = ws;
    ws.binaryType = "arraybuffer";
    const encoder = new TextEncoder();
    ws.onopen = () => {
      t.setStatus("open", "connected");
      t.term.focus();
    };
    ws.onmessage = (ev) => {
      if (typeof ev.data !== "string") {
        t.term.write(new Uint8Array(ev.data));
        return;
      }
      try {
        const msg = JSON.parse(ev.data);
        if (msg.type === "exit") t.term.write("\r\n[the shell exited with code " + msg.code + "]\r\n");
        if (msg.type === "error") say(msg.error);
        if (msg.type === "participants") {
          if (msg.terminal && !t.terminal) {
            // Closing this tab leaves the shell on the agent for a while.
            close.title = "Close this tab: the shell keeps running on the agent for a few minutes (Attach it again from the session's page); type exit to end it";
          }
          if (msg.terminal) t.terminal = msg.terminal;
          t.participants = msg.participants || [];
          t.moderated = !!msg.moderated;
          t.controller = msg.controller || null;
          if (window.rtunnelTerminal === t) renderControl(t);
          if (msg.event === "control") say((msg.controller || "nobody") + " now has control of " + t.label + ".");
          const others = t.participants.length - 1;
          if (t.status === "open") {
            t.setStatus("open", others > 0 ? "connected · " + t.participants.map((p) => p.name + (p.mode === "watch" ? " (watching)" : "")).join(", ") : "connected");
          }
          if (msg.event === "joined" || msg.event === "left") {
            say(msg.name + (msg.event === "joined" ? (msg.mode === "watch" ? " is watching " : " joined ") : " left ") + t.label + ".");
          }
        }
      } catch (_) {
        // Not for us.
      }
    };
    ws.onclose = (ev) => {
      const why = { 1000: "closed", 1006: "connection lost", 1008: "access revoked", 1011: "server error" }[ev.code];
      if (t.status === "waiting") {
        t.setStatus("closed", "not opened: the customer refused or did not answer");
        t.term.write("The customer refused access, or did not answer in time.\r\n");
      } else {
        t.setStatus("closed", why || "closed (" + ev.code + ")");
      }
      t.term.options.disableStdin = true;
    };
    t.term.onData((data) => ws.readyState === WebSocket.OPEN && ws.send(encoder.encode(data)));
    t.term.onResize(({ cols, rows }) => {
      if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "resize", cols, rows }));
    });
  }

  // Who types in a moderated terminal, and the means to change it.
  function renderControl(t) {
    const bar = document.getElementById("terminal-control");
    if (!t || !t.moderated) {
      bar.hidden = true;
      bar.replaceChildren();
      return;
    }
    const me = state.me && state.me.name;
    const send = (msg) => t.ws && t.ws.readyState === WebSocket.OPEN && t.ws.send(JSON.stringify(msg));
    const parts = [h("span", { class: "holder", text: "Moderated · control: " + (t.controller || "nobody") })];
    if (t.controller === me) {
      const others = t.participants.filter((p) => p.mode === "join" && p.name !== me);
      if (others.length) {
        const pick = h(
          "select",
          { "aria-label": "Hand over to" },
          others.map((p) => h("option", { value: p.name, text: p.name }))
        );
        parts.push(" ", pick, " ", h("button", { type: "button", class: "hand-over", text: "Hand over", onclick: () => send({ type: "hand_over", to: pick.value }) }));
      }
    } else if (isAdmin() && t.mode !== "watch") {
      parts.push(" ", h("button", { type: "button", class: "take-over", text: "Take over", onclick: () => send({ type: "take_over" }) }));
    }
    bar.replaceChildren(...parts);
    bar.hidden = false;
  }

  function selectTerminal(t) {
    window.rtunnelTerminal = t;
    renderControl(t);
    for (const o of state.terminals) {
      const on = o === t;
      o.tab.setAttribute("aria-selected", on ? "true" : "false");
      o.pane.hidden = !on;
    }
    requestAnimationFrame(() => {
      t.fit.fit();
      t.term.focus();
    });
  }

  function closeTerminal(t) {
    if (t.ws) t.ws.close(1000);
    t.term.dispose();
    t.tab.remove();
    t.pane.remove();
    state.terminals = state.terminals.filter((o) => o !== t);
    updateTerminalCount();
    if (state.terminals.length) selectTerminal(state.terminals[state.terminals.length - 1]);
  }

  function updateTerminalCount() {
    const c = document.getElementById("terminal-count");
    c.textContent = String(state.terminals.length);
    c.hidden = !state.terminals.length;
    document.getElementById("terminal-empty").hidden = state.terminals.length > 0;
  }

  // The terminals fill the window below the header, whatever its height.
  function placeTerminals() {
    const header = document.querySelector("header.top");
    document.getElementById("terminals").style.top = header.offsetHeight + "px";
  }

  window.addEventListener("resize", () => {
    placeTerminals();
    for (const t of state.terminals) if (!t.pane.hidden) t.fit.fit();
  });

  async function viewTerminals(el) {
    el.append(h("h1", { class: "visually-hidden", text: "Terminals" }));
    const open = state.terminals.find((t) => !t.pane.hidden) || state.terminals[0];
    if (open) selectTerminal(open);
    return {};
  }

  // ---- recordings ------------------------------------------------------

  async function viewRecording(el, id) {
    const session = new URLSearchParams(location.hash.split("?")[1] || "").get("session");
    const player = h("div", { class: "player", id: "player" });
    el.append(
      h("p", {}, h("a", { href: session ? "#/sessions/" + session : "#/sessions", text: "← Session" })),
      h("h1", { text: "Terminal recording" }),
      player,
      h("p", {}, h("a", { href: base + "/api/v1/recordings/" + id, download: "recording-" + id + ".cast", text: "Download (asciicast v2)" }))
    );
    const p = AsciinemaPlayer.create(base + "/api/v1/recordings/" + id, player, { fit: "width", autoPlay: false });
    state.player = p;
    return { leave: () => p.dispose && p.dispose() };
  }

  // ---- systems ---------------------------------------------------------

  async function viewSystems(el) {
    const list = h("div");
    const shown = h("div");
    let page = 1;
    const load = async () => {
      const data = await api("GET", "/api/v1/systems?page_size=25&page=" + page);
      for (const s of data.items) systemNames.set(s.id, s.name);
      const rows = data.items.map((s) => {
        const cells = [
          h("td", { text: s.name }),
          h("td", {}, h("span", { class: "badge " + (s.online ? "status-active" : "status-offline"), text: s.online ? "online" : "offline" })),
          h("td", {}, s.session ? h("a", { href: "#/sessions/" + s.session.id }, badge(s.session.status)) : "—"),
          h("td", { text: s.agent_software || "" }),
          h("td", { text: when(s.last_seen_at) }),
        ];
        if (isAdmin()) cells.push(h("td", { class: "row-actions" }, systemActions(s)));
        return h("tr", { dataset: { system: s.id } }, cells);
      });
      const headers = ["Name", "Agent", "Current session", "Agent version", "Last connected"];
      if (isAdmin()) headers.push("");
      list.replaceChildren(
        table(headers, rows, isAdmin() ? "No system yet: enroll one above." : "You hold no grant on any system."),
        data.total > data.page_size ? pager(data, (p) => ((page = p), load())) : ""
      );
    };

    function systemActions(s) {
      return [
        h("button", {
          type: "button",
          text: "Rename",
          onclick: async () => {
            const input = h("input", { name: "name", required: true, value: s.name });
            const done = await ask("Rename " + s.name, [["New name", input]], "Rename", (data) =>
              api("PATCH", "/api/v1/systems/" + s.id, { name: data.get("name") })
            );
            if (done) await load();
          },
        }),
        h("button", {
          type: "button",
          text: "New secret",
          onclick: async () => {
            if (!confirm("Replace the secret of " + s.name + "? Its agent stops until it is given the new one.")) return;
            try {
              const e = await api("POST", "/api/v1/systems/" + s.id + "/regenerate-secret");
              shown.replaceChildren(secretBox("New secret for " + e.name, [["Key", e.key], ["Secret", e.secret]]));
            } catch (e) {
              shown.replaceChildren(errorBox(e));
            }
          },
        }),
        h("button", {
          type: "button",
          class: "danger",
          text: "Delete",
          onclick: async () => {
            if (!confirm("Delete " + s.name + " with its sessions and grants? Its agent is stopped.")) return;
            try {
              await api("DELETE", "/api/v1/systems/" + s.id);
              await load();
            } catch (e) {
              shown.replaceChildren(errorBox(e));
            }
          },
        }),
      ];
    }

    el.append(h("h1", { text: "Systems" }));
    if (isAdmin()) {
      el.append(
        form(
          { class: "inline card", "aria-label": "Enroll a system", id: "enroll" },
          [field("Name", h("input", { name: "name", required: true, pattern: "[A-Za-z0-9._-]{1,64}", placeholder: "customer-box" }))],
          "Enroll",
          async (data, f) => {
            const e = await api("POST", "/api/v1/systems", { name: data.get("name") });
            f.reset();
            shown.replaceChildren(
              secretBox("Enrolled " + e.name, [["System id", e.id], ["Key", e.key], ["Secret", e.secret]]),
              h("p", {}, "Run the agent on the system with ", code("RTUNNEL_SECRET=" + e.secret + " rtunnel-agent run --url " + location.origin.replace(/^http/, "ws") + base + "/api/v1/tunnel --key " + e.key))
            );
            await load();
          }
        )
      );
    }
    el.append(shown, list);
    await load();
    return { onChange: () => load().catch(() => {}) };
  }

  // ---- API tokens ------------------------------------------------------

  async function viewTokens(el) {
    const list = h("div");
    const shown = h("div");
    const load = async () => {
      const data = await api("GET", "/api/v1/tokens?page_size=100");
      list.replaceChildren(
        table(
          ["Token id", "User", "Created", "Expires", "Status", ""],
          data.items.map((t) =>
            h(
              "tr",
              {},
              h("td", {}, h("code", { text: t.id })),
              h("td", { text: t.user_id === state.me.id ? "you" : t.user_id }),
              h("td", { text: when(t.created_at) }),
              h("td", { text: t.expires_at ? when(t.expires_at) : "never" }),
              h("td", {}, badge(t.status)),
              h(
                "td",
                {},
                t.status === "active"
                  ? h("button", {
                      type: "button",
                      class: "danger",
                      text: "Revoke",
                      onclick: async () => {
                        if (!confirm("Revoke this token? Whatever uses it stops at once.")) return;
                        await api("DELETE", "/api/v1/tokens/" + t.id).catch((e) => shown.replaceChildren(errorBox(e)));
                        await load();
                      },
                    })
                  : ""
              )
            )
          ),
          "No API token yet."
        )
      );
    };
    const expires = h(
      "select",
      { name: "expires_in" },
      [["30d", "30 days"], ["8h", "8 hours"], ["90d", "90 days"], ["365d", "a year"], ["", "never"]].map(([v, t]) =>
        h("option", { value: v, text: t })
      )
    );
    el.append(
      h("h1", { text: "API tokens" }),
      h("p", { text: "For scripts and for rtunnel-agent forward (RTUNNEL_TOKEN)." }),
      form({ class: "inline card", "aria-label": "Create an API token" }, [field("Expires in", expires)], "Create token", async (data) => {
        const body = {};
        if (data.get("expires_in")) body.expires_in = data.get("expires_in");
        const t = await api("POST", "/api/v1/tokens", body);
        shown.replaceChildren(secretBox("New API token", [["Token", t.token]]));
        await load();
      }),
      shown,
      list
    );
    await load();
    return {};
  }

  // ---- users (admin) ---------------------------------------------------

  const ROLES = ["viewer", "operator", "admin"];

  async function viewUsers(el) {
    const list = h("div");
    const shown = h("div");
    const load = async () => {
      const data = await api("GET", "/api/v1/users?page_size=100");
      list.replaceChildren(
        table(
          ["Name", "Role", "Email", "Password", "State", ""],
          data.items.map((u) => {
            const role = h("select", { "aria-label": "Role of " + u.name }, ROLES.map((r) => h("option", { value: r, text: r })));
            role.value = u.role;
            role.disabled = u.id === state.me.id;
            role.addEventListener("change", async () => {
              try {
                await api("PATCH", "/api/v1/users/" + u.id, { role: role.value });
                say(u.name + " is now " + role.value + ".");
              } catch (e) {
                shown.replaceChildren(errorBox(e));
                role.value = u.role;
              }
            });
            return h(
              "tr",
              { dataset: { user: u.name } },
              h("td", { text: u.name }),
              h("td", {}, role),
              h("td", { text: u.email || "" }),
              h("td", { text: u.has_password ? "set" : "none" }),
              h("td", {}, badge(u.disabled ? "disabled" : "active")),
              h(
                "td",
                { class: "row-actions" },
                u.id === state.me.id
                  ? ""
                  : h("button", {
                      type: "button",
                      text: u.disabled ? "Enable" : "Disable",
                      onclick: async () => {
                        try {
                          await api("PATCH", "/api/v1/users/" + u.id, { disabled: !u.disabled });
                          await load();
                        } catch (e) {
                          shown.replaceChildren(errorBox(e));
                        }
                      },
                    }),
                h("button", {
                  type: "button",
                  text: "Set password",
                  onclick: async () => {
                    const input = h("input", { name: "password", type: "password", required: true, autocomplete: "new-password" });
                    const done = await ask(
                      "New password for " + u.name + " (their sign-ins end)",
                      [["Password", input]],
                      "Set password",
                      (data) => api("PATCH", "/api/v1/users/" + u.id, { password: data.get("password") })
                    );
                    if (done) {
                      say("Password set for " + u.name + ".");
                      await load();
                    }
                  },
                })
              )
            );
          })
        )
      );
    };
    el.append(
      h("h1", { text: "Users" }),
      form(
        { class: "inline card", "aria-label": "Create a user", id: "create-user" },
        [
          field("Name", h("input", { name: "name", required: true })),
          field("Role", h("select", { name: "role" }, ROLES.map((r) => h("option", { value: r, text: r })))),
          field("Email", h("input", { name: "email", type: "email" })),
          field("Password", h("input", { name: "password", type: "password", autocomplete: "new-password" })),
        ],
        "Create user",
        async (data, f) => {
          const body = { name: data.get("name"), role: data.get("role") };
          if (data.get("email")) body.email = data.get("email");
          if (data.get("password")) body.password = data.get("password");
          await api("POST", "/api/v1/users", body);
          f.reset();
          say("User created.");
          await load();
        }
      ),
      shown,
      list
    );
    await load();
    return {};
  }

  // ---- grants (admin) --------------------------------------------------

  async function viewGrants(el) {
    const [users, systems] = await Promise.all([api("GET", "/api/v1/users?page_size=100"), loadSystemNames()]);
    const userNames = new Map(users.items.map((u) => [u.id, u.name]));
    const list = h("div");
    const load = async () => {
      const data = await api("GET", "/api/v1/grants?page_size=100");
      list.replaceChildren(
        table(
          ["User", "System", "Given", "Ends", ""],
          data.items.map((g) =>
            h(
              "tr",
              { dataset: { grant: g.id } },
              h("td", { text: userNames.get(g.user_id) || g.user_id }),
              h("td", { text: systemName(g.system_id) }),
              h("td", { text: when(g.created_at) }),
              h("td", { text: g.expires_at ? when(g.expires_at) : "never" }),
              h(
                "td",
                {},
                h("button", {
                  type: "button",
                  class: "danger",
                  text: "Revoke",
                  onclick: async () => {
                    if (!confirm("Revoke this grant? What the user has open on the system is cut.")) return;
                    await api("DELETE", "/api/v1/grants", { user_id: g.user_id, system_id: g.system_id });
                    say("Grant revoked.");
                    await load();
                  },
                })
              )
            )
          ),
          "No active grant."
        )
      );
    };
    el.append(
      h("h1", { text: "Grants" }),
      h("p", { text: "Operators and viewers see and reach only the systems they hold a grant on." }),
      form(
        { class: "inline card", "aria-label": "Give a grant", id: "give-grant" },
        [
          field("User", h("select", { name: "user_id", required: true }, users.items.filter((u) => u.role !== "admin").map((u) => h("option", { value: u.id, text: u.name + " (" + u.role + ")" })))),
          field("System", h("select", { name: "system_id", required: true }, systems.map((s) => h("option", { value: s.id, text: s.name })))),
          field(
            "For",
            h("select", { name: "expires_in" }, [["8h", "8 hours"], ["1d", "a day"], ["7d", "a week"], ["30d", "30 days"], ["", "until revoked"]].map(([v, t]) => h("option", { value: v, text: t })))
          ),
        ],
        "Give grant",
        async (data) => {
          const body = { user_id: data.get("user_id"), system_id: data.get("system_id") };
          if (data.get("expires_in")) body.expires_in = data.get("expires_in");
          await api("POST", "/api/v1/grants", body);
          say("Grant given.");
          await load();
        }
      ),
      list
    );
    await load();
    return {};
  }

  // ---- launcher resources (admin) --------------------------------------

  const LAUNCH_TYPES = ["guacamole", "tsplus", "rdp", "ssh", "direct"];

  async function viewResources(el) {
    const list = h("div");
    const shown = h("div");
    const load = async () => {
      const data = await api("GET", "/api/v1/resources?page_size=100");
      list.replaceChildren(
        table(
          ["Name", "Address", "Launch", ""],
          data.items.map((r) => {
            const type = h("select", { "aria-label": "Connection type for " + r.name }, LAUNCH_TYPES.map((t) => h("option", { value: t, text: t })));
            return h(
              "tr",
              {},
              h("td", { text: r.name }),
              h("td", { text: r.ip_address || "" }),
              h(
                "td",
                {},
                type,
                " ",
                h("button", {
                  type: "button",
                  class: "primary",
                  text: "Launch",
                  onclick: async () => {
                    try {
                      const l = await api("POST", "/api/v1/launch", { resourceId: r.id, connectionType: type.value });
                      shown.replaceChildren(
                        h(
                          "div",
                          { class: "card" },
                          h("h2", { text: "Launch URL for " + r.name }),
                          code(l.sessionUrl),
                          /^https?:\/\//i.test(l.sessionUrl)
                            ? h("p", {}, h("a", { href: l.sessionUrl, target: "_blank", rel: "noopener", text: "Open it in a new tab" }))
                            : ""
                        )
                      );
                    } catch (e) {
                      shown.replaceChildren(errorBox(e));
                    }
                  },
                })
              ),
              h(
                "td",
                {},
                h("button", {
                  type: "button",
                  class: "danger",
                  text: "Delete",
                  onclick: async () => {
                    if (!confirm("Delete " + r.name + "?")) return;
                    await api("DELETE", "/api/v1/resources/" + r.id).catch((e) => shown.replaceChildren(errorBox(e)));
                    await load();
                  },
                })
              )
            );
          }),
          "No launcher resource yet."
        )
      );
    };
    el.append(
      h("h1", { text: "Launcher resources" }),
      form(
        { class: "inline card", "aria-label": "Add a resource" },
        [field("Name", h("input", { name: "name", required: true })), field("Address", h("input", { name: "ip_address", placeholder: "10.0.0.5" }))],
        "Add resource",
        async (data, f) => {
          const body = { name: data.get("name") };
          if (data.get("ip_address")) body.ip_address = data.get("ip_address");
          await api("POST", "/api/v1/resources", body);
          f.reset();
          await load();
        }
      ),
      shown,
      list
    );
    await load();
    return {};
  }

  // ---- audit log (admin) -----------------------------------------------

  async function viewAudit(el) {
    const list = h("div");
    const event = h("input", { name: "event", placeholder: "e.g. session_closed" });
    const session = h("input", { name: "session_id", placeholder: "session id" });
    const since = h("input", { name: "since", type: "datetime-local" });
    let page = 1;
    const load = async () => {
      const q = new URLSearchParams({ page: String(page), page_size: "50" });
      if (event.value) q.set("event", event.value.trim());
      if (session.value) q.set("session_id", session.value.trim());
      if (since.value) q.set("since", new Date(since.value).toISOString());
      try {
        const data = await api("GET", "/api/v1/audit?" + q);
        list.replaceChildren(
          table(
            ["When", "Event", "Who", "System", "Session", "From", "Details"],
            data.items.map((a) =>
              h(
                "tr",
                {},
                h("td", { text: when(a.at) }),
                h("td", {}, h("code", { text: a.event })),
                h("td", { text: a.actor || "" }),
                h("td", { text: a.system_id ? systemName(a.system_id) : "" }),
                h("td", {}, a.session_id ? h("a", { href: "#/sessions/" + a.session_id, text: a.session_id.slice(0, 8) }) : ""),
                h("td", { text: a.ip_address || "" }),
                h("td", { class: "details", text: a.details && Object.keys(a.details).length ? JSON.stringify(a.details) : "" })
              )
            ),
            "No event matches."
          ),
          pager(data, (p) => ((page = p), load()))
        );
      } catch (e) {
        list.replaceChildren(errorBox(e));
      }
    };
    await loadSystemNames().catch(() => {});
    el.append(
      h("h1", { text: "Audit log" }),
      form({ class: "inline filters", "aria-label": "Filter the audit log" }, [field("Event", event), field("Session", session), field("Since", since)], "Filter", async () => {
        page = 1;
        await load();
      }),
      list
    );
    await load();
    return {};
  }

  // ---- start -----------------------------------------------------------

  (async function start() {
    try {
      const me = await fetch(base + "/api/v1/auth/me", { credentials: "same-origin" });
      if (me.ok) return signedIn(await me.json());
      if (me.status === 401 && (await refresh())) {
        const again = await fetch(base + "/api/v1/auth/me", { credentials: "same-origin" });
        if (again.ok) return signedIn(await again.json());
      }
    } catch (_) {
      // Shown below.
    }
    signedOut("");
  })();
})();
