// The live transcript: one list item per user turn and per assistant reply, keyed by the
// protocol's ids (user item_id, response id). Text only ever goes in through textContent.

// Server-side split from `response.done` response.timings (ms since the end of speech unless noted).
const TIMING_LABELS = {
  speech_end_to_first_audio_ms: "voice-to-voice (server)",
  first_audio_ms: "first audio sent",
  turn_detected_ms: "end of turn detected",
  transcript_ms: "transcript ready",
  first_token_ms: "first LLM token",
  first_sentence_ms: "first sentence",
  asr_last_segment_ms: "last segment ASR (duration)",
  llm_ttft_ms: "LLM time to first token (duration)",
  tts_first_chunk_ms: "TTS first chunk (duration)",
  total_ms: "whole reply",
};

/**
 * The number shown on a reply. Spoken turn: the server's voice-to-voice figure (end of speech to
 * first audio sent), else the page's own. Typed turn: the page's send -> first audio played.
 */
function headline(kind, timings, clientLatencyMs) {
  if (kind === "text") return clientLatencyMs == null ? null : `${Math.round(clientLatencyMs)} ms to first audio`;
  for (const key of ["speech_end_to_first_audio_ms", "first_audio_ms"]) {
    if (typeof timings?.[key] === "number") return `${Math.round(timings[key])} ms voice-to-voice`;
  }
  return clientLatencyMs == null ? null : `${Math.round(clientLatencyMs)} ms voice-to-voice`;
}

export class Transcript {
  constructor(listEl, { onChange = () => {} } = {}) {
    this.list = listEl;
    this.onChange = onChange;
    this.users = new Map(); // item_id -> {li, text, committed}
    this.replies = new Map(); // response id -> {li, text}
  }

  get isEmpty() {
    return this.list.children.length === 0;
  }

  // ---- user side -----------------------------------------------------------------------------

  /** Speech started: reserve the user's place in the log so the reply never lands above it. */
  userPending(itemId) {
    // A previous placeholder that was never committed was noise the server dropped.
    for (const [id, u] of this.users) if (!u.committed && !u.text) this._removeUser(id);
    if (!itemId || this.users.has(itemId)) return;
    const li = this._item("user", "You");
    li.classList.add("is-pending");
    li.setAttribute("aria-busy", "true");
    li.querySelector(".msg-text").textContent = "…";
    this.users.set(itemId, { li, text: "", committed: false });
    this._changed();
  }

  userCommitted(itemId) {
    const u = this.users.get(itemId);
    if (u) u.committed = true;
  }

  userDelta(itemId, delta) {
    const u = this.users.get(itemId);
    if (u && delta) this._setText(u, u.text + delta);
  }

  userFinal(itemId, text) {
    let u = this.users.get(itemId);
    if (!u) {
      // Transcript for a turn we never saw start (e.g. after a reconnect): append it.
      this.userPending(itemId);
      u = this.users.get(itemId);
      if (!u) return;
    }
    u.committed = true;
    u.text = (text ?? "").trim();
    if (!u.text) {
      this._removeUser(itemId); // nothing intelligible: don't leave an empty bubble
      return;
    }
    u.li.classList.remove("is-pending");
    u.li.removeAttribute("aria-busy");
    this._setText(u, u.text);
  }

  /** A typed message (shown at once; the server's echo of it is not rendered again). */
  userTyped(text) {
    const li = this._item("user", "You");
    li.classList.add("is-typed");
    li.querySelector(".msg-text").textContent = text;
    this._changed();
  }

  // ---- assistant side ------------------------------------------------------------------------

  replyStart(responseId) {
    if (this.replies.has(responseId)) return;
    const li = this._item("assistant", "Assistant");
    li.classList.add("is-streaming");
    li.setAttribute("aria-busy", "true");
    this.replies.set(responseId, { li, text: "" });
    this._changed();
  }

  replyDelta(responseId, delta) {
    const r = this.replies.get(responseId);
    if (r && delta) this._setText(r, r.text + delta);
  }

  /** The full transcript of the reply's audio part (authoritative over the deltas). */
  replyText(responseId, text) {
    const r = this.replies.get(responseId);
    if (r && typeof text === "string" && text) this._setText(r, text);
  }

  /** kind: "voice" | "text" (what started the turn), for how its latency is labelled. */
  replyDone(responseId, { status, timings, clientLatencyMs, kind } = {}) {
    const r = this.replies.get(responseId);
    if (!r) return;
    r.li.classList.remove("is-streaming");
    r.li.removeAttribute("aria-busy");
    if (status === "cancelled") {
      this.replyInterrupted(responseId);
    } else if (status && status !== "completed") {
      r.li.classList.add(`is-${status}`);
      if (!r.text) r.li.querySelector(".msg-text").textContent = "(no reply)";
      this._tag(r.li, status);
    }
    this._timings(r.li, timings, clientLatencyMs, kind);
    this._changed();
  }

  /** The listener stopped hearing this reply (barge-in): it may still finish streaming text. */
  replyInterrupted(responseId) {
    const r = this.replies.get(responseId);
    if (!r) return;
    r.li.classList.add("is-cancelled");
    if (!r.text) r.li.querySelector(".msg-text").textContent = "(interrupted)";
    this._tag(r.li, "interrupted");
    this._changed();
  }

  /** A marker line, e.g. after a reconnect (the server starts a fresh conversation). */
  divider(text) {
    if (this.isEmpty) return;
    const li = document.createElement("li");
    li.className = "divider";
    li.textContent = text;
    this.list.append(li);
    this._changed();
  }

  // ---- helpers -------------------------------------------------------------------------------

  _item(role, who) {
    const li = document.createElement("li");
    li.className = `msg msg-${role}`;
    const name = document.createElement("span");
    name.className = "msg-who";
    name.textContent = who;
    const text = document.createElement("p");
    text.className = "msg-text";
    li.append(name, text);
    this.list.append(li);
    return li;
  }

  /** A message's text (a user turn's or a reply's entry), shown as it is. */
  _setText(entry, text) {
    entry.text = text;
    entry.li.querySelector(".msg-text").textContent = text;
    this._changed();
  }

  _removeUser(itemId) {
    this.users.get(itemId)?.li.remove();
    this.users.delete(itemId);
    this._changed();
  }

  /** One tag per message; a later one replaces it. */
  _tag(li, label) {
    let tag = li.querySelector(".msg-tag");
    if (!tag) {
      tag = document.createElement("span");
      tag.className = "msg-tag";
      li.querySelector(".msg-who").append(tag);
    }
    tag.textContent = label;
  }

  _timings(li, timings, clientLatencyMs, kind) {
    const entries = Object.entries(timings ?? {}).filter(
      ([k, v]) => k.endsWith("_ms") && typeof v === "number" && Number.isFinite(v),
    );
    if (!entries.length && clientLatencyMs == null) return;

    const meta = document.createElement("details");
    meta.className = "msg-meta";
    const summary = document.createElement("summary");
    summary.textContent = headline(kind, timings, clientLatencyMs) ?? "timings";
    summary.setAttribute("aria-label", `${summary.textContent}. Show timing details`);
    const dl = document.createElement("dl");
    if (clientLatencyMs != null) {
      addRow(dl, kind === "text" ? "here: sent → first audio played" : "here: speech end → first audio played", clientLatencyMs);
    }
    for (const [k, v] of entries) addRow(dl, TIMING_LABELS[k] ?? k.replace(/_ms$/, "").replaceAll("_", " "), v);
    meta.append(summary, dl);
    li.append(meta);
  }

  _changed() {
    this.onChange();
  }
}

function addRow(dl, label, ms) {
  const dt = document.createElement("dt");
  dt.textContent = label;
  const dd = document.createElement("dd");
  dd.textContent = `${Math.round(ms)} ms`;
  dl.append(dt, dd);
}
