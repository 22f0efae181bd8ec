// The browser terminal: xterm.js on the ticketed WebSocket of
// /api/v1/sessions/{id}/terminal. Keystrokes go out as binary messages,
// resizes as {"type":"resize"} text messages; the PTY's output comes back as
// binary messages and the end as {"type":"exit","code":N}.
//
// The page is opened as /console/terminal?session=ID#ticket=T (a ticket from
// POST /api/v1/sessions/{id}/terminal-ticket; in the fragment it never
// reaches a server log). Without a ticket it asks for a login and gets one.
//
// Every path is taken relative to where the page is served, so the console
// works under a path prefix (`--path-prefix`, or an app embedding rtunnel
// under `/support`): /support/console/terminal calls /support/api/v1/...
"use strict";
(function () {
  const base = location.pathname.replace(/\/console\/terminal\/?$/, "");
  const params = new URLSearchParams(location.search);
  const hash = new URLSearchParams(location.hash.slice(1));
  const session = params.get("session") || "";
  const statusEl = document.getElementById("status");
  const state = { status: "starting", exitCode: null, closeCode: null };
  window.rtunnelTerminal = state;

  function setStatus(s, text) {
    state.status = s;
    statusEl.dataset.state = s;
    statusEl.textContent = text;
  }

  if (!/^[0-9a-fA-F-]{32,36}$/.test(session)) {
    setStatus("error", "no session: open /console/terminal?session=ID");
    return;
  }
  document.getElementById("title").textContent = "session " + session;

  let ticket = hash.get("ticket") || params.get("ticket");
  // A ticket is single use: keep it out of the history and of reloads.
  if (ticket) {
    params.delete("ticket");
    history.replaceState(null, "", location.pathname + "?" + params.toString());
  }

  const term = new Terminal({
    cursorBlink: true,
    convertEol: false,
    scrollback: 5000,
    fontFamily: "ui-monospace, Menlo, Consolas, monospace",
  });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  state.term = term;

  async function api(path, token, body) {
    const resp = await fetch(base + path, {
      method: "POST",
      headers: Object.assign(
        { "Content-Type": "application/json" },
        token ? { Authorization: "Bearer " + token } : {}
      ),
      body: JSON.stringify(body || {}),
      credentials: "omit",
    });
    const data = await resp.json().catch(() => ({}));
    if (!resp.ok) {
      throw new Error(data.error ? data.error + " (" + data.code + ")" : "HTTP " + resp.status);
    }
    return data;
  }

  function askLogin() {
    const form = document.getElementById("login");
    const error = document.getElementById("login-error");
    form.hidden = false;
    setStatus("idle", "sign in");
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      error.textContent = "";
      const f = new FormData(form);
      try {
        const login = await api("/api/v1/auth/login", null, {
          username: f.get("username"),
          password: f.get("password"),
        });
        const t = await api(
          "/api/v1/sessions/" + encodeURIComponent(session) + "/terminal-ticket",
          login.access_token
        );
        form.hidden = true;
        connect(t.ticket);
      } catch (e) {
        error.textContent = e.message;
      }
    });
  }

  function connect(ticket) {
    const el = document.getElementById("terminal");
    term.open(el);
    fit.fit();
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const url =
      scheme + "://" + location.host + base + "/api/v1/sessions/" + encodeURIComponent(session) +
      "/terminal?ticket=" + encodeURIComponent(ticket) + "&cols=" + term.cols + "&rows=" + term.rows;
    setStatus("connecting", "connecting");
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    const encoder = new TextEncoder();

    ws.onopen = () => {
      setStatus("open", "connected");
      term.focus();
    };
    ws.onmessage = (ev) => {
      if (typeof ev.data !== "string") {
        term.write(new Uint8Array(ev.data));
        return;
      }
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch (_) {
        return;
      }
      if (msg.type === "exit") {
        state.exitCode = msg.code;
        term.write("\r\n[the shell exited with code " + msg.code + "]\r\n");
      }
    };
    ws.onclose = (ev) => {
      state.closeCode = ev.code;
      const why = {
        1000: "closed",
        1006: "connection lost",
        1008: "access revoked",
        1011: "server error",
      }[ev.code] || "closed (" + ev.code + ")";
      setStatus("closed", why);
      term.options.disableStdin = true;
    };
    term.onData((data) => {
      if (ws.readyState === WebSocket.OPEN) ws.send(encoder.encode(data));
    });
    term.onBinary((data) => {
      if (ws.readyState !== WebSocket.OPEN) return;
      const bytes = new Uint8Array(data.length);
      for (let i = 0; i < data.length; i++) bytes[i] = data.charCodeAt(i) & 0xff;
      ws.send(bytes);
    });
    term.onResize(({ cols, rows }) => {
      if (ws.readyState === WebSocket.OPEN) {
        ws.send(JSON.stringify({ type: "resize", cols: cols, rows: rows }));
      }
    });
    window.addEventListener("resize", () => fit.fit());
  }

  if (ticket) {
    connect(ticket);
  } else {
    askLogin();
  }
})();
