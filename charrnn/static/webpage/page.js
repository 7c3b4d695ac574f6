// The exported page's controls. Everything the page needs is inside the file: the model
// (a JSON description and the weights as base64), the engine's WebAssembly and the worker's
// source. The worker is made from a Blob, so nothing is ever fetched.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const block = (id) => $(id).textContent.trim();
  const bytes = (b64) => {
    if (Uint8Array.fromBase64) return Uint8Array.fromBase64(b64);
    const text = atob(b64), out = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
    return out;
  };
  const model = JSON.parse(block("charrnn-model"));
  const form = $("controls"), output = $("output"), status = $("status"), note = $("note");
  const run = $("generate"), stop = $("stop");
  let worker = null, ready = false, current = 0, received = 0;

  const say = (text, kind = "") => { status.textContent = text; status.dataset.kind = kind; };
  const notice = (text) => { note.textContent = text; note.hidden = !text; };

  function start() {
    const source = new Blob([block("charrnn-engine")], { type: "text/javascript" });
    worker = new Worker(URL.createObjectURL(source));
    worker.onmessage = (event) => receive(event.data);
    worker.onerror = (event) => { say(`The engine failed: ${event.message || "unknown error"}`, "error"); event.preventDefault(); };
    const weights = bytes(block("charrnn-weights")).buffer;
    const wasm = [["WebAssembly SIMD with fused multiply-add", bytes(block("charrnn-wasm-fma"))],
                  ["WebAssembly SIMD", bytes(block("charrnn-wasm"))]];
    worker.postMessage({ type: "load", model, weights, wasm }, [weights]);
    say("Loading the model…");
  }

  function receive(msg) {
    if (msg.type === "ready") {
      ready = true;
      run.disabled = false;
      document.body.dataset.engine = msg.engine;
      say(`Ready (${msg.engine}).`);
      return;
    }
    if (msg.id !== null && msg.id !== current) return; // from a generation already replaced
    if (msg.type === "text") {
      const following = output.scrollHeight - output.scrollTop - output.clientHeight < 40; // before the text grows
      output.textContent += msg.text;
      received += msg.text.length;
      if (following) output.scrollTop = output.scrollHeight;
    } else if (msg.type === "progress") {
      say(`Reading the prime: ${msg.primed.toLocaleString()} of ${msg.of.toLocaleString()} tokens…`);
    } else if (msg.type === "note") {
      notice(msg.message);
      if ($("echo").checked && typeof msg.prime === "string") output.textContent = msg.prime; // the prime it read
    } else if (msg.type === "error") {
      finish();
      say(msg.message, "error");
    } else if (msg.type === "done") {
      finish();
      const rate = msg.seconds > 0 ? Math.round(msg.chars / msg.seconds) : 0;
      const why = { length: "", stop: " at a stop sequence", stopped: " (stopped)" }[msg.reason] || "";
      say(`${msg.chars.toLocaleString()} characters${why} in ${msg.seconds.toFixed(2)} s` +
          (rate ? ` (${rate.toLocaleString()} characters/s)` : "") + ".");
      Object.assign(document.body.dataset, { done: String(current), chars: msg.chars, steps: msg.steps || 0,
                                             seconds: msg.seconds, reason: msg.reason });
    }
  }

  function finish() {
    run.disabled = !ready;
    stop.disabled = true;
  }

  function unescape(text) { // as `charrnn sample --stop`: \n, \t, \r and \\ are decoded
    return text.replace(/\\([ntr\\])/g, (_, c) => ({ n: "\n", t: "\t", r: "\r", "\\": "\\" })[c]);
  }

  function number(id, parse, lo, hi, label) {
    const text = $(id).value.trim();
    if (!text) return null;
    const v = parse(text);
    if (!Number.isFinite(v) || v < lo || v > hi || String(v) !== String(parse(String(v)))) {
      throw new Error(`${label} must be a number from ${lo} to ${hi}.`);
    }
    return v;
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!ready) return;
    let request;
    try {
      const stops = [unescape($("stop-seq").value)];
      request = {
        type: "generate", id: ++current, prime: $("prime").value,
        length: number("length", (s) => Number(s), 0, 1000000, "Length") ?? 500,
        temperature: number("temperature", (s) => Number(s), 0, 100, "Temperature") ?? 0.8,
        topK: number("top-k", (s) => Number(s), 1, model.vocab_size, "Top-k"),
        topP: number("top-p", (s) => Number(s), 0, 1, "Top-p"),
        seed: number("seed", (s) => Number(s), 0, Number.MAX_SAFE_INTEGER, "Seed"),
        stop: stops.filter((s) => s), unknown: $("unknown").value,
      };
      if (request.topP === 0) throw new Error("Top-p must be above 0.");
      if (![request.length, request.topK, request.seed].every((v) => v === null || Number.isInteger(v))) {
        throw new Error("Length, top-k and seed must be whole numbers.");
      }
    } catch (e) {
      say(e.message, "error");
      return;
    }
    output.textContent = $("echo").checked ? request.prime : "";
    received = 0;
    notice("");
    delete document.body.dataset.done;
    run.disabled = true;
    stop.disabled = false;
    say("Generating…");
    worker.postMessage(request);
  });

  stop.addEventListener("click", () => worker.postMessage({ type: "stop" }));
  $("copy").addEventListener("click", async () => {
    try { await navigator.clipboard.writeText(output.textContent); say("Copied."); }
    catch (e) { say("This browser did not allow copying; select the text instead.", "error"); }
  });
  start();
})();
