// The chat page of `mimo serve` (served by mimo/server/playground.py).
//
// It streams from this server's own /v1/chat/completions with "mimo_provenance": true, so every streamed
// choice also carries its tokens as [text, provenance]: 0 = sampled from the main model, k = 1..3 = MTP block
// k's draft that verification accepted. From those it colours each token and computes the reply's figures.
//
// Model output, tool names and arguments are untrusted: they reach the page only through textContent and
// DOM nodes, never as HTML, and no link is ever made from them. The API key lives in `state.key` only (this
// tab's memory: no storage, no cookie) and goes only to this server, as a bearer token.
"use strict";

(() => {
  const SOURCES = ["trunk", "draft 1", "draft 2", "draft 3"];
  const state = {
    key: null, // the API key, when the server wants one
    info: null, // GET v1/mimo/info: model name, MTP depth, sampling defaults
    messages: [], // the conversation as the API receives it
    controller: null, // AbortController of the request in flight (Esc / Stop abort it)
  };

  const $ = (id) => document.getElementById(id);

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function headers(extra) {
    const h = Object.assign({}, extra);
    if (state.key !== null) h.Authorization = "Bearer " + state.key;
    return h;
  }

  // "HTTP 401: missing API key: ..." from an OpenAI-shaped error response (or whatever the body says).
  async function httpError(resp) {
    let message = resp.statusText;
    try {
      const body = await resp.json();
      if (body && body.error && body.error.message) message = body.error.message;
    } catch (_) {
      // not JSON: the status text will do
    }
    return `HTTP ${resp.status}: ${message}`;
  }

  function notice(text) {
    const box = $("notice");
    box.textContent = text || "";
    box.hidden = !text;
  }

  // ------------------------------------------------------------------ server info and API key

  async function loadInfo() {
    let resp;
    try {
      resp = await fetch("v1/mimo/info", { headers: headers() });
    } catch (e) {
      $("model-name").textContent = "server unreachable";
      return false;
    }
    if (resp.status === 401) {
      askForKey(state.key === null ? "" : "this key was refused (HTTP 401)");
      $("model-name").textContent = "API key needed";
      return false;
    }
    if (!resp.ok) {
      $("model-name").textContent = await httpError(resp);
      return false;
    }
    const info = await resp.json();
    state.info = info;
    $("model-name").textContent = info.model;
    const k = info.num_speculative_tokens;
    $("mtp-info").textContent = k ? `MTP: ${k} draft token${k > 1 ? "s" : ""} per step` : "MTP off";
    const defaults = info.sampling_defaults || {};
    for (const [id, key] of [["temperature", "temperature"], ["top-p", "top_p"]]) {
      if ($(id).value === "" && defaults[key] !== undefined) $(id).value = String(defaults[key]);
    }
    $("max-tokens").placeholder = `server default (up to ${info.max_chat_tokens})`;
    $("thinking").options[0].textContent = `default (${info.thinking_default ? "on" : "off"})`;
    if (state.key !== null) $("key-status").textContent = "key accepted";
    return true;
  }

  function askForKey(status) {
    $("key-form").hidden = false;
    $("key-status").textContent = status;
  }

  async function useKey(event) {
    event.preventDefault();
    const key = $("api-key").value; // sent as typed: the server decides what it accepts
    // A header carries bytes: characters beyond Latin-1 cannot be sent, and the server could never match them.
    if (/[^\x00-\xff]/.test(key)) {
      $("key-status").textContent = "an HTTP header cannot carry this key (it has characters beyond Latin-1)";
      return;
    }
    state.key = key === "" ? null : key;
    $("api-key").value = "";
    $("key-status").textContent = "checking…";
    await loadInfo();
  }

  // ------------------------------------------------------------------ one assistant reply

  class Reply {
    constructor() {
      this.root = el("div", "msg assistant");
      this.root.append(el("div", "role", "mimo"));
      this.reasoning = el("details", "reasoning");
      this.reasoning.open = true;
      this.reasoning.hidden = true;
      this.reasoning.append(el("summary", null, "reasoning"));
      this.reasoningText = el("div", "reasoning-text");
      this.reasoning.append(this.reasoningText);
      this.text = el("div", "text");
      this.cards = el("div", "tool-calls");
      this.error = el("div", "error");
      this.error.setAttribute("role", "alert");
      this.error.hidden = true;
      this.stats = el("div", "stats", "waiting for the first token…");
      this.tokens = el("details", "tokens");
      this.tokens.open = true;
      this.tokens.hidden = true;
      this.tokens.append(el("summary", null, "tokens by how they were produced"));
      this.tokenList = el("div", "token-list");
      this.tokens.append(this.tokenList);
      this.root.append(this.reasoning, this.text, this.cards, this.error, this.stats, this.tokens);

      this.content = "";
      this.reasoningContent = "";
      this.calls = []; // {id, name, arguments, card, args}
      this.finishReason = null;
      this.sent = performance.now();
      this.first = null; // time of the first token
      this.last = null; // time of the latest token
      this.counts = [0, 0, 0, 0]; // tokens per provenance
      this.lastSource = 0;
      this.stopped = false;
    }

    get tokenCount() {
      return this.counts.reduce((a, b) => a + b, 0);
    }

    get generated() {
      return this.tokenCount > 0 || this.content !== "" || this.reasoningContent !== "" || this.calls.length > 0;
    }

    onChunk(chunk) {
      if (chunk.error) {
        this.fail(chunk.error.message || "the server reported an error");
        return;
      }
      for (const choice of chunk.choices || []) {
        if (choice.index !== 0) continue;
        const delta = choice.delta || {};
        if (delta.reasoning_content) {
          this.reasoningContent += delta.reasoning_content;
          this.reasoningText.textContent = this.reasoningContent;
          this.reasoning.hidden = false;
        }
        if (delta.content) {
          this.content += delta.content;
          this.text.textContent = this.content;
        }
        for (const call of delta.tool_calls || []) this.onToolCall(call);
        if (choice.mimo && Array.isArray(choice.mimo.tokens)) this.onTokens(choice.mimo.tokens);
        if (choice.finish_reason) this.finishReason = choice.finish_reason;
      }
    }

    onToolCall(delta) {
      let call = this.calls[delta.index];
      if (!call) {
        call = { id: "", name: "", arguments: "", card: el("div", "tool-card") };
        call.title = el("div", "tool-name");
        call.args = el("pre", "tool-args");
        call.card.append(el("div", "tool-label", "tool call"), call.title, call.args);
        this.cards.append(call.card);
        this.calls[delta.index] = call;
      }
      if (delta.id) call.id = delta.id;
      const fn = delta.function || {};
      if (fn.name) call.name += fn.name;
      if (fn.arguments) call.arguments += fn.arguments;
      call.title.textContent = call.name;
      call.args.textContent = prettyJSON(call.arguments);
    }

    onTokens(tokens) {
      const now = performance.now();
      if (this.first === null) this.first = now;
      this.last = now;
      this.tokens.hidden = false;
      for (const [text, source] of tokens) {
        const s = Math.max(0, Math.min(3, source | 0));
        const span = el("span", `tok p${s}`, text);
        span.title = SOURCES[s];
        span.dataset.p = String(s);
        this.tokenList.append(span);
        this.counts[s] += 1;
        this.lastSource = s;
      }
      this.showStats();
    }

    // Figures of the reply. Acceptance length = tokens per main-model decode forward, as the engine counts it:
    // after the first token (prefill's), every verify step emits its accepted drafts and then exactly one
    // main-model token, except a last step that a stop cut off before that token.
    figures() {
      const n = this.tokenCount;
      const forwards = this.counts[0] - 1 + (this.lastSource > 0 ? 1 : 0);
      const seconds = this.first !== null && this.last > this.first ? (this.last - this.first) / 1000 : 0;
      return {
        tokens: n,
        accepted: n - this.counts[0],
        ttftMs: this.first === null ? null : this.first - this.sent,
        tokensPerSecond: n > 1 && seconds > 0 ? (n - 1) / seconds : null,
        acceptanceLength: forwards > 0 ? (n - 1) / forwards : null,
      };
    }

    showStats() {
      const f = this.figures();
      const parts = [];
      if (f.ttftMs !== null) parts.push(`TTFT ${Math.round(f.ttftMs)} ms`);
      if (f.tokensPerSecond !== null) parts.push(`${f.tokensPerSecond.toFixed(1)} tokens/s`);
      parts.push(`${f.tokens} tokens`);
      parts.push(`acceptance length ${f.acceptanceLength === null ? "–" : f.acceptanceLength.toFixed(2)}`);
      parts.push(this.counts.map((c, i) => `${SOURCES[i]} ${c}`).join(", "));
      if (this.stopped) parts.push("stopped");
      this.stats.textContent = parts.join(" · ");
      const d = this.stats.dataset;
      d.tokens = String(f.tokens);
      d.accepted = String(f.accepted);
      d.acceptanceLength = f.acceptanceLength === null ? "" : String(f.acceptanceLength);
      d.ttftMs = f.ttftMs === null ? "" : String(f.ttftMs);
    }

    fail(message) {
      this.error.textContent = message;
      this.error.hidden = false;
    }

    // After the stream: the message for the history, and the tool cards' result boxes.
    finish() {
      for (const call of this.calls) call.args.textContent = prettyJSON(call.arguments);
      if (this.tokenCount || this.stopped) this.showStats();
      else this.stats.hidden = true;
      this.root.dataset.done = "true";
      const message = { role: "assistant", content: this.content };
      if (this.reasoningContent) message.reasoning_content = this.reasoningContent; // MiMo needs it back
      if (this.calls.length) {
        message.tool_calls = this.calls.map((c) => ({
          id: c.id, type: "function", function: { name: c.name, arguments: c.arguments },
        }));
        if (!this.content) message.content = null;
      }
      return message;
    }

    // A result box per call and one button that sends them all and continues the chat.
    offerToolResults() {
      if (!this.calls.length || this.stopped) return;
      const boxes = this.calls.map((call) => {
        const box = el("textarea", "tool-result");
        box.rows = 2;
        box.placeholder = "paste the tool's result";
        box.setAttribute("aria-label", `result of ${call.name}`);
        const label = el("label", "tool-result-label", "tool result");
        label.append(box);
        call.card.append(label);
        return box;
      });
      const button = el("button", "tool-send", this.calls.length > 1 ? "Send tool results" : "Send tool result");
      button.type = "button";
      button.addEventListener("click", () => {
        if (state.controller) return;
        const base = state.messages.length;
        this.calls.forEach((call, i) => {
          state.messages.push({ role: "tool", tool_call_id: call.id, content: boxes[i].value });
          boxes[i].disabled = true;
        });
        button.disabled = true;
        streamReply({ base, onFailure: () => {
          boxes.forEach((b) => { b.disabled = false; });
          button.disabled = false;
        } });
      });
      this.cards.append(button);
    }
  }

  function prettyJSON(text) {
    try {
      return JSON.stringify(JSON.parse(text), null, 2);
    } catch (_) {
      return text; // not (yet) complete JSON: shown as it came
    }
  }

  // ------------------------------------------------------------------ requests

  function readJSON(id, what, kind) {
    const text = $(id).value.trim();
    if (!text) return null;
    let value;
    try {
      value = JSON.parse(text);
    } catch (e) {
      throw new Error(`${what}: not valid JSON (${e.message})`);
    }
    const ok = kind === "list" ? Array.isArray(value) : value !== null && typeof value === "object" && !Array.isArray(value);
    if (!ok) throw new Error(`${what}: must be a JSON ${kind}`);
    return value;
  }

  function requestBody() {
    const body = Object.assign({}, readJSON("extra", "more request fields", "object"));
    const number = (id, key, parse) => {
      const v = $(id).value.trim();
      if (v !== "") body[key] = parse(v);
    };
    number("temperature", "temperature", Number);
    number("top-p", "top_p", Number);
    number("max-tokens", "max_tokens", (v) => parseInt(v, 10));
    const thinking = $("thinking").value;
    if (thinking) {
      body.chat_template_kwargs = Object.assign({}, body.chat_template_kwargs, { enable_thinking: thinking === "on" });
    }
    const tools = readJSON("tools", "tools", "list");
    if (tools && tools.length) body.tools = tools;
    if (state.info) body.model = state.info.model;
    body.messages = state.messages;
    body.stream = true;
    body.mimo_provenance = true;
    return body;
  }

  // Server-sent events: "data: ..." lines, events separated by a blank line, "[DONE]" at the end.
  async function readEvents(resp, onData) {
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).replace(/^ /, "")).join("\n");
        if (!data) continue;
        if (data === "[DONE]") return;
        onData(JSON.parse(data));
      }
    }
  }

  function setBusy(busy) {
    $("send").disabled = busy;
    $("stop").disabled = !busy;
    document.body.classList.toggle("busy", busy);
  }

  // Send the conversation and stream the reply. `base` is the history's length before this turn's new
  // messages: a request that fails before any output takes them back out (and `onFailure` restores the input).
  async function streamReply({ base, onFailure }) {
    let body;
    try {
      body = requestBody();
    } catch (e) {
      notice(e.message);
      state.messages.length = base;
      onFailure();
      return;
    }
    notice("");
    const reply = new Reply();
    $("messages").append(reply.root);
    scrollDown(true);
    const controller = new AbortController();
    state.controller = controller;
    setBusy(true);
    let error = null;
    try {
      const resp = await fetch("v1/chat/completions", {
        method: "POST",
        headers: headers({ "Content-Type": "application/json" }),
        body: JSON.stringify(body),
        signal: controller.signal,
      });
      if (!resp.ok) {
        error = await httpError(resp);
        if (resp.status === 401) askForKey(state.key === null ? "enter the key, then send again" : "this key was refused (HTTP 401)");
      } else {
        await readEvents(resp, (chunk) => {
          reply.onChunk(chunk);
          scrollDown(false);
        });
      }
    } catch (e) {
      if (e.name === "AbortError") reply.stopped = true;
      else error = `the request failed: ${e.message}`;
    }
    state.controller = null;
    setBusy(false);
    if (error) reply.fail(error);
    const message = reply.finish();
    if (reply.generated) {
      state.messages.push(message);
      reply.offerToolResults();
    } else {
      state.messages.length = base; // nothing came back: the turn can be sent again as it was
      reply.root.classList.add("failed");
      onFailure();
    }
    if (!reply.stopped || reply.generated) return;
    reply.stats.textContent = "stopped before the first token";
    reply.stats.hidden = false;
  }

  function send() {
    if (state.controller) return;
    const box = $("prompt");
    const text = box.value;
    if (!text.trim()) return;
    const base = state.messages.length;
    state.messages.push({ role: "user", content: text });
    const bubble = el("div", "msg user");
    bubble.append(el("div", "role", "you"), el("div", "text", text));
    $("messages").append(bubble);
    box.value = "";
    streamReply({ base, onFailure: () => {
      bubble.classList.add("failed");
      if (!box.value) box.value = text; // back in the box, to send again
    } });
  }

  function stop() {
    if (state.controller) state.controller.abort(); // closing the connection aborts the request on the server
  }

  function newChat() {
    stop();
    state.messages = [];
    $("messages").replaceChildren();
    notice("");
    $("prompt").focus();
  }

  // Follow the stream unless the reader scrolled up (a chunk can add many lines at once, so "near the bottom"
  // is decided when the reader scrolls, not when text arrives).
  let following = true;

  function scrollDown(always) {
    const box = $("messages");
    if (always) following = true;
    if (following) box.scrollTop = box.scrollHeight;
  }

  // ------------------------------------------------------------------ wiring

  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    send();
  });
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && state.controller) {
      e.preventDefault();
      stop();
    }
  });
  $("messages").addEventListener("scroll", () => {
    const box = $("messages");
    following = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  });
  $("view").addEventListener("change", () => {
    $("messages").dataset.view = $("view").value; // the style sheet hides the text or the token view
  });
  $("stop").addEventListener("click", stop);
  $("new-chat").addEventListener("click", newChat);
  $("key-form").addEventListener("submit", useKey);
  loadInfo();
  $("prompt").focus();
})();
