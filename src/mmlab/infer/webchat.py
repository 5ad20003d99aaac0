"""The chat page that ``mmlab serve`` shows at ``/``: one HTML file, no build step, nothing from the internet.

It talks to the server like any OpenAI client: ``POST /v1/chat/completions`` with ``"stream": true``,
and reads the Server-Sent Events with ``fetch`` + ``ReadableStream`` so each token appears as it
arrives. The sampling settings on the page are sent with every request. ``/?q=Hello`` sends "Hello"
as soon as the page opens.
"""

from __future__ import annotations

import html

CHAT_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<link rel="icon" href="data:,">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>MiniMind Lab chat</title>
<style>
  :root { font-family: system-ui, sans-serif; color: #1d2330; background: #f4f5f7; }
  body { margin: 0; display: flex; flex-direction: column; height: 100vh; }
  header { padding: .6rem 1rem; background: #1d2330; color: #fff; display: flex; gap: 1rem; align-items: baseline; }
  header small { color: #aab; }
  #settings { display: flex; flex-wrap: wrap; gap: .8rem; padding: .5rem 1rem; background: #e6e8ee; font-size: .9rem; }
  #settings label { display: flex; gap: .3rem; align-items: center; }
  #settings input { width: 5.5rem; }
  #settings input#system { width: 18rem; }
  #log { flex: 1; overflow-y: auto; padding: 1rem; display: flex; flex-direction: column; gap: .6rem; }
  .msg { max-width: 75%; padding: .5rem .8rem; border-radius: .6rem; white-space: pre-wrap; line-height: 1.4; }
  .user { align-self: flex-end; background: #2f6fde; color: #fff; }
  .assistant { align-self: flex-start; background: #fff; border: 1px solid #d5d8e0; }
  .error { align-self: center; color: #a11; background: #fde8e8; }
  .meta { align-self: flex-start; font-size: .75rem; color: #778; margin-top: -.4rem; }
  form { display: flex; gap: .5rem; padding: .8rem 1rem; background: #fff; border-top: 1px solid #d5d8e0; }
  textarea { flex: 1; resize: none; font: inherit; padding: .5rem; }
  button { font: inherit; padding: 0 1rem; }
</style>
</head>
<body data-state="idle">
<header><strong>MiniMind Lab chat</strong><small>model: {{MODEL}}</small></header>
<div id="settings">
  <label>temperature <input id="temperature" type="number" min="0" max="5" step="0.1" value="0.8"></label>
  <label>top_p <input id="top_p" type="number" min="0.01" max="1" step="0.05" value="0.95"></label>
  <label>max_tokens <input id="max_tokens" type="number" min="1" max="{{MAX_TOKENS_LIMIT}}" step="1"
    value="{{DEFAULT_MAX_TOKENS}}"></label>
  <label>seed <input id="seed" type="number" step="1" placeholder="random"></label>
  <label>system <input id="system" type="text" placeholder="optional system message"></label>
</div>
<div id="log" aria-live="polite"></div>
<form id="form">
  <textarea id="input" rows="2" placeholder="Type a message; Enter sends, Shift+Enter starts a new line"></textarea>
  <button id="send" type="submit">Send</button>
  <button id="stop" type="button" disabled>Stop</button>
  <button id="reset" type="button">Reset</button>
</form>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let conversation = [];    // the conversation so far: {role, content} messages
let controller = null;    // aborts the request in flight (the Stop button)

function bubble(cls, text) {
  const div = document.createElement("div");
  div.className = "msg " + cls;
  div.textContent = text;
  $("log").appendChild(div);
  $("log").scrollTop = $("log").scrollHeight;
  return div;
}

function settings() {
  const body = {
    temperature: Number($("temperature").value),
    top_p: Number($("top_p").value),
    max_tokens: Number($("max_tokens").value),
  };
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  return body;
}

async function send(text) {
  if (!text.trim() || controller) return;
  const system = $("system").value.trim();
  conversation.push({role: "user", content: text});
  bubble("user", text);
  const reply = bubble("assistant", "");
  reply.dataset.chunks = "0";
  const messages = (system ? [{role: "system", content: system}] : []).concat(conversation);
  controller = new AbortController();
  document.body.dataset.state = "streaming";
  $("send").disabled = true; $("stop").disabled = false;
  let finish = null, usage = null;
  try {
    const res = await fetch("/v1/chat/completions", {
      method: "POST", headers: {"Content-Type": "application/json"}, signal: controller.signal,
      body: JSON.stringify({messages, stream: true, stream_options: {include_usage: true}, ...settings()}),
    });
    if (!res.ok) {
      const err = await res.json().catch(() => ({error: {message: res.statusText}}));
      throw new Error(res.status + ": " + err.error.message);
    }
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let end;
      while ((end = buffer.indexOf("\\n\\n")) >= 0) {   // one Server-Sent Event per blank-line-separated block
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        for (const line of event.split("\\n")) {
          if (!line.startsWith("data: ")) continue;    // ": keep-alive" comments and other fields
          const data = line.slice(6);
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          if (chunk.usage) usage = chunk.usage;
          const choice = chunk.choices[0];
          if (!choice) continue;
          if (choice.delta && choice.delta.content) {
            reply.textContent += choice.delta.content;
            reply.dataset.chunks = String(Number(reply.dataset.chunks) + 1);
            $("log").scrollTop = $("log").scrollHeight;
          }
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
    }
    conversation.push({role: "assistant", content: reply.textContent});
    const meta = bubble("meta", (usage ? usage.completion_tokens + " tokens, " : "") + "finish: " + finish);
    meta.className = "meta";
    document.body.dataset.state = "done";
  } catch (e) {
    conversation.pop();                                     // the turn failed: forget the question too
    if (!reply.textContent) reply.remove();
    bubble("error", e.name === "AbortError" ? "stopped" : String(e.message || e));
    document.body.dataset.state = e.name === "AbortError" ? "done" : "error";
  } finally {
    controller = null;
    $("send").disabled = false; $("stop").disabled = true;
  }
}

$("form").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("input").value;
  $("input").value = "";
  send(text);
});
$("input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("form").requestSubmit(); }
});
$("stop").addEventListener("click", () => controller && controller.abort());
$("reset").addEventListener("click", () => {
  if (controller) controller.abort();
  conversation = [];
  $("log").replaceChildren();
  document.body.dataset.state = "idle";
});
const q = new URLSearchParams(location.search).get("q");
if (q) send(q);
</script>
</body>
</html>
"""


def render_page(model_name: str, max_tokens_limit: int, default_max_tokens: int) -> str:
    """The page with this server's model name and max_tokens limits filled in."""
    return (CHAT_PAGE.replace("{{MODEL}}", html.escape(model_name))
            .replace("{{MAX_TOKENS_LIMIT}}", str(max_tokens_limit))
            .replace("{{DEFAULT_MAX_TOKENS}}", str(min(default_max_tokens, max_tokens_limit))))
