// charrnn's generation engine for the exported web page. It runs in a Web Worker, so the
// page never waits on it: the page sends the model once ("load"), then requests
// ("generate", "stop"); the worker answers with "ready", text as it is made, and "done".
//
// A step is charrnn's own CPU step (charrnn/model/cpustep.py) with the same folded weights:
// layer 0's input product is a table with one row per token, each layer above multiplies
// [x; h] by [W_ih W_hh] in one product, sigmoid rows come halved so that one tanh covers
// every gate (sigmoid(z) = 0.5 tanh(z / 2) + 0.5), and the LSTM's gates are ordered
// i, f, o, g. The products and the tanh run in WebAssembly SIMD (engine.wat) over weights
// laid out in its memory; plain JavaScript takes over where WebAssembly SIMD is missing.
// Sampling follows charrnn.sampling: temperature, top-k, top-p, banned ids, and for
// vocabularies with byte pieces a UTF-8 guard that only lets valid sequences through.
"use strict";

const GREEDY_BELOW = 1e-6; // charrnn.sampling.GREEDY_BELOW
const SLICE_MS = 25; // work between looks at the message queue (a Stop is seen this fast)

// -- the numbers: float16 decoding, weights into memory --------------------------------
const F16 = (() => { // every float16 bit pattern -> float32
  const table = new Float32Array(65536);
  for (let bits = 0; bits < 65536; bits++) {
    const sign = bits & 0x8000 ? -1 : 1, exp = (bits >> 10) & 0x1f, frac = bits & 0x3ff;
    table[bits] = exp === 0 ? sign * frac * 2 ** -24
      : exp === 31 ? (frac ? NaN : sign * Infinity)
      : sign * (1 + frac / 1024) * 2 ** (exp - 15);
  }
  return table;
})();

const ceil = (n, m) => Math.ceil(n / m) * m;

const HAS_WASM = typeof WebAssembly === "object" && typeof WebAssembly.Memory === "function";

class Memory {
  // Float32 arrays in one buffer, each 16-byte aligned and zero-padded: a WebAssembly
  // memory, or a plain ArrayBuffer where WebAssembly is switched off (the JavaScript path).
  constructor(floats) {
    const pages = Math.ceil((floats * 4 + 65536) / 65536);
    this.memory = HAS_WASM ? new WebAssembly.Memory({ initial: pages }) : null;
    this.buffer = this.memory ? this.memory.buffer : new ArrayBuffer(pages * 65536);
    this.next = 0;
  }
  alloc(floats) {
    const ptr = this.next;
    this.next += ceil(floats, 4) * 4;
    return { ptr, view: new Float32Array(this.buffer, ptr, floats) };
  }
}

function decodeArray(spec, weights) {
  // The array `spec` names inside the weights blob, as float32 (rows, cols) row-major.
  const [rows, cols] = spec.shape.length === 2 ? spec.shape : [1, spec.shape[0]];
  const n = rows * cols, out = new Float32Array(n);
  if (spec.dtype === "float32") {
    out.set(new Float32Array(weights, spec.offset, n));
  } else if (spec.dtype === "float16") {
    const src = new Uint16Array(weights, spec.offset, n);
    for (let i = 0; i < n; i++) out[i] = F16[src[i]];
  } else if (spec.dtype === "int8") { // one float32 scale per row
    const src = new Int8Array(weights, spec.offset, n), scale = new Float32Array(weights, spec.scale_offset, rows);
    for (let r = 0; r < rows; r++) {
      const s = scale[r];
      for (let c = 0; c < cols; c++) out[r * cols + c] = src[r * cols + c] * s;
    }
  } else {
    throw new Error(`unknown weight type ${spec.dtype}`);
  }
  return { rows, cols, data: out };
}

// -- the network -------------------------------------------------------------------------
class Net {
  constructor(model, weights, wasm) {
    this.cell = model.cell;
    this.relu = model.relu;
    const H = this.H = model.hidden_size, V = this.V = model.vocab_size;
    const arrays = {};
    for (const spec of model.arrays) arrays[spec.name] = decodeArray(spec, weights);
    // Room for every matrix padded (rows to 4, columns to 8) and the vectors of a step.
    let floats = 0;
    for (const a of Object.values(arrays)) floats += ceil(a.rows, 4) * ceil(a.cols, 8) + 8;
    floats += (model.num_layers * 8 + 8) * (ceil(4 * H, 8) + ceil(V, 8) + 2 * ceil(model.input_size + H, 8) + 64);
    const mem = this.mem = new Memory(floats);
    const place = (a) => { // a matrix into memory, padded for the kernel
      if (!a) return null;
      const R = ceil(a.rows, 4), C = ceil(a.cols, 8), m = mem.alloc(R * C);
      for (let r = 0; r < a.rows; r++) m.view.set(a.data.subarray(r * a.cols, (r + 1) * a.cols), r * C);
      return { ptr: m.ptr, rows: R, cols: C, n: a.rows };
    };
    const vector = (n) => mem.alloc(ceil(n, 8) + 8);
    this.table = arrays.table ? arrays.table.data : null; // (V, G)
    this.G = arrays.table ? arrays.table.cols : arrays["layers.0.b"].cols;
    this.embedding = arrays.embedding || null; // (V, E) when layer 0 multiplies its input
    const gru = this.cell === "gru";
    this.layers = [];
    for (let l = 0; l < model.num_layers; l++) {
      const w = place(arrays[`layers.${l}.w`]), w_hh = place(arrays[`layers.${l}.w_hh`]);
      const b = arrays[`layers.${l}.b`], b_hh = arrays[`layers.${l}.b_hh`];
      const fromTable = l === 0 && this.table !== null;
      // The layer's input buffer [x; h]: x of K columns (none when read from the table), then h.
      const K = fromTable ? 0 : (gru ? arrays[`layers.${l}.w`].cols : arrays[`layers.${l}.w`].cols - H);
      const input = vector(K + H);
      this.layers.push({
        w, w_hh, b: b ? b.data : null, b_hh: b_hh ? b_hh.data : null, K, fromTable, input,
        x: input.view.subarray(0, K), h: input.view.subarray(K, K + H), hPtr: input.ptr + K * 4,
        c: this.cell === "lstm" ? vector(H) : null,
      });
    }
    this.g = vector(this.G); // gates (GRU: the input product)
    this.gh = gru ? vector(this.G) : null; // GRU: the recurrent product
    this.tmp = new Float32Array(H);
    this.head = place(arrays["head.w"]);
    this.headBias = arrays["head.b"].data;
    this.logits = vector(V);
    const imports = { env: { memory: mem.memory } };
    this.engine = "JavaScript";
    for (const [name, bytes] of HAS_WASM ? wasm : []) {
      try {
        if (!WebAssembly.validate(bytes)) continue;
        const k = new WebAssembly.Instance(new WebAssembly.Module(bytes), imports).exports;
        this.gemv = k.gemv;
        this.tanh = k.tanh;
        this.engine = name;
        break;
      } catch (e) { /* this browser lacks the feature: try the next */ }
    }
    if (this.engine === "JavaScript") { // no WebAssembly SIMD: the same arithmetic, slower
      const F = new Float32Array(mem.buffer);
      this.gemv = (w, x, y, rows, cols) => {
        const wo = w >> 2, xo = x >> 2, yo = y >> 2;
        for (let r = 0; r < rows; r++) {
          let s = 0;
          const base = wo + r * cols;
          for (let k = 0; k < cols; k++) s += F[base + k] * F[xo + k];
          F[yo + r] = s;
        }
      };
      this.tanh = (src, dst, n) => {
        const so = src >> 2, d = dst >> 2;
        for (let i = 0; i < n; i++) F[d + i] = Math.tanh(F[so + i]);
      };
    }
  }

  reset() {
    for (const layer of this.layers) {
      layer.input.view.fill(0);
      if (layer.c) layer.c.view.fill(0);
    }
  }

  product(m, xPtr, out) {
    this.gemv(m.ptr, xPtr, out.ptr, m.rows, m.cols);
  }

  step(token) {
    // Feed one token; the logits (V,) are left in this.logits.view.
    const H = this.H, G = this.G, g = this.g.view, tmp = this.tmp;
    for (let l = 0; l < this.layers.length; l++) {
      const L = this.layers[l], h = L.h;
      if (l === 0 && !L.fromTable) L.x.set(this.embedding.data.subarray(token * this.embedding.cols, (token + 1) * this.embedding.cols));
      if (this.cell === "gru") {
        const gh = this.gh.view;
        this.product(L.w_hh, L.hPtr, this.gh);
        for (let j = 0; j < G; j++) gh[j] += L.b_hh[j];
        if (L.fromTable) {
          g.set(this.table.subarray(token * G, (token + 1) * G));
        } else {
          this.product(L.w, L.input.ptr, this.g);
          for (let j = 0; j < G; j++) g[j] += L.b[j];
        }
        for (let j = 0; j < 2 * H; j++) g[j] += gh[j];
        this.tanh(this.g.ptr, this.g.ptr, 2 * H);
        for (let j = 0; j < 2 * H; j++) g[j] = 0.5 * g[j] + 0.5; // r, z
        for (let j = 0; j < H; j++) g[2 * H + j] += gh[2 * H + j] * g[j]; // W_in x + b_in + r (W_hn h + b_hn)
        this.tanh(this.g.ptr + 8 * H, this.g.ptr + 8 * H, H);
        for (let j = 0; j < H; j++) { const n = g[2 * H + j]; h[j] = n + g[H + j] * (h[j] - n); }
      } else {
        this.product(L.w, L.fromTable ? L.hPtr : L.input.ptr, this.g);
        if (L.fromTable) {
          const row = token * G, table = this.table;
          for (let j = 0; j < G; j++) g[j] += table[row + j];
        } else {
          for (let j = 0; j < G; j++) g[j] += L.b[j];
        }
        if (this.cell === "lstm") {
          this.tanh(this.g.ptr, this.g.ptr, G);
          for (let j = 0; j < 3 * H; j++) g[j] = 0.5 * g[j] + 0.5; // i, f, o
          const c = L.c.view;
          for (let j = 0; j < H; j++) c[j] = c[j] * g[H + j] + g[j] * g[3 * H + j];
          this.tanh(L.c.ptr, L.hPtr, H);
          for (let j = 0; j < H; j++) h[j] *= g[2 * H + j];
        } else if (this.relu) {
          for (let j = 0; j < H; j++) h[j] = g[j] > 0 ? g[j] : 0;
        } else {
          this.tanh(this.g.ptr, L.hPtr, H);
        }
      }
      if (l + 1 < this.layers.length) this.layers[l + 1].x.set(h);
    }
    const last = this.layers[this.layers.length - 1];
    this.product(this.head, last.hPtr, this.logits);
    const logits = this.logits.view, bias = this.headBias;
    for (let j = 0; j < this.V; j++) logits[j] += bias[j];
    return logits;
  }
}

// -- the vocabulary ----------------------------------------------------------------------
// UTF-8 decoder states (charrnn.sampling._CONTINUATION): 0 = at a character boundary;
// 1..7 = inside a character, waiting for a continuation byte in a range.
const CONTINUATION = { 1: [0x80, 0xbf, 0], 2: [0x80, 0xbf, 1], 3: [0x80, 0xbf, 2], 4: [0xa0, 0xbf, 1],
  5: [0x80, 0x9f, 1], 6: [0x90, 0xbf, 2], 7: [0x80, 0x8f, 2] };
const UTF8_STATES = 8;

function utf8Next(state, byte) {
  if (state) {
    const [low, high, after] = CONTINUATION[state];
    return low <= byte && byte <= high ? after : -1;
  }
  if (byte < 0x80) return 0;
  if (byte >= 0xc2 && byte <= 0xdf) return 1;
  if (byte >= 0xe0 && byte <= 0xef) return byte === 0xe0 ? 4 : byte === 0xed ? 5 : 2;
  if (byte >= 0xf0 && byte <= 0xf4) return byte === 0xf0 ? 6 : byte === 0xf4 ? 7 : 3;
  return -1;
}

class Vocab {
  constructor(v) {
    this.kind = v.kind;
    this.banned = v.banned;
    this.start = v.start;
    const enc = new TextEncoder();
    // The bytes each id stands for: a string's UTF-8, or one byte given as a number.
    this.bytes = v.pieces.map((p) => (typeof p === "number" ? Uint8Array.of(p) : enc.encode(p)));
    this.size = this.bytes.length;
    if (v.kind === "char") {
      this.ids = new Map();
      v.pieces.forEach((p, i) => { if (typeof p === "string" && p && !this.ids.has(p)) this.ids.set(p, i); });
    } else {
      this.sp = new SentencePiece(v.sentencepiece);
    }
    this.guard = this.bytes.some((b) => b.length === 1 && b[0] >= 0x80) ? this.buildGuard() : null;
  }

  buildGuard() {
    // Which ids each UTF-8 state allows, and the state each leads to (charrnn.sampling.Utf8Guard).
    const V = this.size, allowed = new Uint8Array(UTF8_STATES * V), after = new Uint8Array(UTF8_STATES * V);
    const dec = new TextDecoder("utf-8", { fatal: true });
    this.bytes.forEach((piece, i) => {
      let whole = piece.length > 0;
      try { dec.decode(piece); } catch (e) { whole = false; }
      if (whole) { allowed[i] = 1; return; }
      if (piece.length === 0) { allowed[i] = 1; return; }
      for (let start = 0; start < UTF8_STATES; start++) {
        let state = start;
        for (const byte of piece) { state = utf8Next(state, byte); if (state < 0) break; }
        if (state >= 0) { allowed[start * V + i] = 1; after[start * V + i] = state; }
      }
    });
    for (const id of this.banned) for (let s = 0; s < UTF8_STATES; s++) allowed[s * V + id] = 0;
    for (;;) { // a state no allowed id leaves must never be entered
      const dead = [];
      for (let s = 1; s < UTF8_STATES; s++) {
        let leaves = false, entered = false;
        for (let i = 0; i < V; i++) if (allowed[s * V + i]) { leaves = true; break; }
        for (let k = 0; k < UTF8_STATES * V && !leaves && !entered; k++) if (allowed[k] && after[k] === s) entered = true;
        if (!leaves && entered) dead.push(s);
      }
      if (!dead.length) break;
      for (let k = 0; k < UTF8_STATES * V; k++) if (allowed[k] && dead.includes(after[k])) allowed[k] = 0;
    }
    return { allowed, after };
  }

  encode(text, unknown) {
    // -> { ids, skipped: [distinct characters], count } or throws a one-sentence Error.
    if (this.kind !== "char") return { ids: this.sp.encode(text), skipped: [], count: 0 };
    const ids = [], missing = new Map();
    for (const ch of text) {
      const id = this.ids.get(ch);
      if (id === undefined) missing.set(ch, (missing.get(ch) || 0) + 1);
      else ids.push(id);
    }
    const count = [...missing.values()].reduce((a, b) => a + b, 0);
    if (count && unknown === "error") throw new Error(unknownMessage([...missing.keys()], count) + " Choose “skip” to drop them.");
    return { ids, skipped: [...missing.keys()], count };
  }
}

function showChar(ch) {
  const code = ch.codePointAt(0);
  if (code < 0x20 || code === 0x7f || (code >= 0x80 && code < 0xa0)) return "U+" + code.toString(16).toUpperCase().padStart(4, "0");
  return JSON.stringify(ch);
}

function unknownMessage(chars, count) {
  const shown = chars.slice(0, 8).map(showChar).join(", ") + (chars.length > 8 ? ", …" : "");
  return `The prime has ${count} character${count === 1 ? "" : "s"} this model never saw: ${shown}.`;
}

class SentencePiece {
  // Encodes text as charrnn's sentencepiece vocabularies do (identity normalization, no
  // dummy prefix, spaces as "▁", newlines as a user-defined piece, byte fallback): the
  // unigram model by the best-scoring segmentation, BPE by merging the best-scoring
  // adjacent pair until none merges.
  constructor(sp) {
    this.type = sp.model_type;
    this.newline = sp.newline_mark;
    this.pieces = new Map();
    this.user = [];
    this.byteIds = new Array(256).fill(-1);
    sp.pieces.forEach(([piece, score, kind], id) => {
      if (kind === "normal" || kind === "user") this.pieces.set(piece, { id, score: Math.fround(score) });
      if (kind === "user") this.user.push(piece);
      if (kind === "byte") this.byteIds[parseInt(piece.slice(3, 5), 16)] = id;
    });
    this.maxLen = 1;
    this.minScore = 0;
    for (const [piece, { score }] of this.pieces) {
      this.maxLen = Math.max(this.maxLen, [...piece].length);
      this.minScore = Math.min(this.minScore, score);
    }
  }

  encode(text) {
    text = text.replace(/\n/g, this.newline).replace(/ /g, "\u2581");
    const out = [];
    // user-defined pieces (the newline) always stand alone
    let rest = text;
    while (rest.length) {
      let at = -1, which = null;
      for (const u of this.user) { const i = rest.indexOf(u); if (i >= 0 && (at < 0 || i < at)) { at = i; which = u; } }
      const part = at < 0 ? rest : rest.slice(0, at);
      if (part) out.push(...(this.type === "bpe" ? this.bpe(part) : this.unigram(part)));
      if (at < 0) break;
      out.push(this.pieces.get(which).id);
      rest = rest.slice(at + which.length);
    }
    return out;
  }

  fallback(ch) {
    const ids = [];
    for (const b of new TextEncoder().encode(ch)) if (this.byteIds[b] >= 0) ids.push(this.byteIds[b]);
    return ids;
  }

  unigram(text) {
    const chars = [...text], n = chars.length;
    // scores summed in float32, as sentencepiece's lattice does (near-ties break the same way)
    const best = new Float32Array(n + 1).fill(-Infinity), from = new Int32Array(n + 1), piece = new Int32Array(n + 1);
    best[0] = 0;
    const unk = Math.fround(this.minScore - 10); // sentencepiece's penalty for an unknown character
    for (let i = 0; i < n; i++) {
      if (best[i] === -Infinity) continue;
      let s = "";
      let single = false;
      for (let len = 1; len <= this.maxLen && i + len <= n; len++) {
        s += chars[i + len - 1];
        const p = this.pieces.get(s);
        if (!p) continue;
        if (len === 1) single = true;
        const score = Math.fround(best[i] + p.score);
        if (score > best[i + len]) { best[i + len] = score; from[i + len] = i; piece[i + len] = p.id; }
      }
      const score = Math.fround(best[i] + unk);
      if (!single && score > best[i + 1]) { best[i + 1] = score; from[i + 1] = i; piece[i + 1] = -1; }
    }
    const ids = [];
    for (let j = n; j > 0; j = from[j]) {
      if (piece[j] >= 0) ids.push([piece[j]]);
      else ids.push(this.fallback(chars[j - 1]));
    }
    return ids.reverse().flat();
  }

  bpe(text) {
    // sentencepiece's BPE: repeatedly merge the adjacent pair whose merged piece scores
    // highest (the leftmost among equals), with a heap of candidate pairs, so a long
    // prime takes n log n, not n^2. Entries whose symbols have changed since are skipped.
    const sym = [...text], n = sym.length;
    const prev = new Int32Array(n), next = new Int32Array(n);
    for (let i = 0; i < n; i++) { prev[i] = i - 1; next[i] = i + 1 < n ? i + 1 : -1; }
    const heap = new PairHeap();
    const offer = (left) => {
      if (left < 0 || next[left] < 0) return;
      const right = next[left];
      const merged = sym[left] + sym[right], p = this.pieces.get(merged);
      if (p) heap.push(p.score, left, merged);
    };
    for (let i = 0; i + 1 < n; i++) offer(i);
    while (heap.size) {
      const { left, merged } = heap.pop();
      const right = next[left];
      if (sym[left] === null || right < 0 || sym[left] + sym[right] !== merged) continue;
      sym[left] = merged;
      sym[right] = null;
      next[left] = next[right];
      if (next[right] >= 0) prev[next[right]] = left;
      offer(prev[left]);
      offer(left);
    }
    const ids = [];
    for (let i = n ? 0 : -1; i >= 0; i = next[i]) {
      const p = this.pieces.get(sym[i]);
      if (p) ids.push(p.id); else ids.push(...this.fallback(sym[i]));
    }
    return ids;
  }
}

class PairHeap {
  // Candidate merges: the highest score first, then the leftmost.
  constructor() { this.items = []; }
  get size() { return this.items.length; }
  before(a, b) { return a.score > b.score || (a.score === b.score && a.left < b.left); }
  push(score, left, merged) {
    const items = this.items;
    items.push({ score, left, merged });
    for (let i = items.length - 1; i > 0;) {
      const up = (i - 1) >> 1;
      if (!this.before(items[i], items[up])) break;
      [items[i], items[up]] = [items[up], items[i]];
      i = up;
    }
  }
  pop() {
    const items = this.items, top = items[0], last = items.pop();
    if (items.length) {
      items[0] = last;
      for (let i = 0; ;) {
        const l = 2 * i + 1, r = l + 1;
        let best = i;
        if (l < items.length && this.before(items[l], items[best])) best = l;
        if (r < items.length && this.before(items[r], items[best])) best = r;
        if (best === i) break;
        [items[i], items[best]] = [items[best], items[i]];
        i = best;
      }
    }
    return top;
  }
}

// -- sampling ----------------------------------------------------------------------------
function random(seed) {
  // xoshiro128** seeded from a number below 2^53 through splitmix32: uniform in [0, 1).
  let lo = seed % 4294967296 >>> 0, hi = Math.floor(seed / 4294967296) >>> 0;
  const mix = () => {
    lo = (lo + 0x9e3779b9) | 0;
    let z = lo ^ hi;
    z = Math.imul(z ^ (z >>> 16), 0x21f0aaad);
    z = Math.imul(z ^ (z >>> 15), 0x735a2d97);
    return (z ^ (z >>> 15)) >>> 0;
  };
  let a = mix(), b = mix(), c = mix(), d = mix();
  if (!(a | b | c | d)) a = 1;
  return () => {
    const result = Math.imul(((Math.imul(b, 5) << 7) | (Math.imul(b, 5) >>> 25)), 9) >>> 0;
    const t = b << 9;
    c ^= a; d ^= b; b ^= c; a ^= d; c ^= t; d = (d << 11) | (d >>> 21);
    return result / 4294967296;
  };
}

function choose(logits, V, cfg, uniform, z, order) {
  // The next id from logits (V,) already masked: argmax when greedy, else a draw from the
  // temperature-scaled distribution cut to top-k and the top-p nucleus (charrnn.sampling.choose).
  if (cfg.temperature < GREEDY_BELOW) {
    let best = 0;
    for (let i = 1; i < V; i++) if (logits[i] > logits[best]) best = i;
    return best;
  }
  const inv = 1 / cfg.temperature;
  let top = -Infinity;
  for (let i = 0; i < V; i++) {
    let v = logits[i] * inv;
    if (Number.isNaN(v)) v = -Infinity;
    z[i] = v;
    if (v > top) top = v;
  }
  if (top === Infinity) { for (let i = 0; i < V; i++) z[i] = z[i] === Infinity ? 0 : -Infinity; top = 0; }
  if (top === -Infinity) { z.fill(0, 0, V); top = 0; } // nothing possible: any id, uniformly
  if ((cfg.topK && cfg.topK < V) || (cfg.topP && cfg.topP < 1)) {
    for (let i = 0; i < V; i++) order[i] = i;
    const sorted = order.subarray(0, V).sort((a, b) => z[b] - z[a]);
    if (cfg.topK && cfg.topK < V) {
      const kth = z[sorted[cfg.topK - 1]];
      for (let i = 0; i < V; i++) if (z[i] < kth) z[i] = -Infinity;
    }
    if (cfg.topP && cfg.topP < 1) {
      let total = 0;
      for (let r = 0; r < V; r++) total += Math.exp(z[sorted[r]] - top);
      let above = 0;
      for (let r = 0; r < V; r++) {
        const p = Math.exp(z[sorted[r]] - top) / total;
        if (r > 0 && above >= cfg.topP) z[sorted[r]] = -Infinity;
        above += p;
      }
    }
  }
  let total = 0;
  for (let i = 0; i < V; i++) { total += Math.exp(z[i] - top); z[i] = total; }
  const point = Math.min(uniform() * total, total * (1 - 2 ** -52));
  for (let i = 0; i < V; i++) if (z[i] > point) return i;
  return V - 1;
}

// -- the worker's loop -------------------------------------------------------------------
let net = null, vocab = null, current = null;
const yieldNow = (() => { // a turn of the event loop without setTimeout's 4 ms clamp
  const channel = new MessageChannel(), waiting = [];
  channel.port1.onmessage = () => waiting.shift()();
  return () => new Promise((resolve) => { waiting.push(resolve); channel.port2.postMessage(0); });
})();

async function generate(req) {
  const id = req.id, cfg = req, V = net.V;
  let encoded;
  try {
    encoded = vocab.encode(req.prime, req.unknown);
  } catch (e) {
    postMessage({ type: "error", id, message: e.message });
    return;
  }
  // the prime as the model reads it: without the characters dropped (as --unknown skip)
  const prime = encoded.count ? [...req.prime].filter((ch) => !encoded.skipped.includes(ch)).join("") : req.prime;
  if (encoded.count) {
    postMessage({ type: "note", id, prime, message: unknownMessage(encoded.skipped, encoded.count) + " They were dropped." });
  }
  let ids = encoded.ids;
  if (!ids.length) ids = vocab.start; // charrnn's default prime: a newline
  const started = performance.now();
  net.reset();
  let logits = null, sliceEnd = performance.now() + SLICE_MS;
  for (let i = 0; i < ids.length; i++) { // warm up on the prime
    logits = net.step(ids[i]);
    if (performance.now() > sliceEnd) {
      postMessage({ type: "progress", id, primed: i + 1, of: ids.length });
      await yieldNow();
      if (current !== id) { postMessage({ type: "done", id, reason: "stopped", chars: 0, seconds: 0 }); return; }
      sliceEnd = performance.now() + SLICE_MS;
    }
  }
  const uniform = random(cfg.seed == null ? Math.floor(Math.random() * 2 ** 53) : cfg.seed);
  const keep = Math.max(1, ...cfg.stop.map((s) => s.length));
  let tail = prime.slice(Math.max(0, prime.length - (keep - 1)));
  const decoder = new TextDecoder("utf-8"), masked = new Float32Array(V), z = new Float64Array(V), order = new Uint32Array(V);
  const guard = vocab.guard, banned = vocab.banned;
  let state = 0, count = 0, pending = "", reason = "length", steps = 0;
  const genStart = performance.now();
  let lastPost = genStart;
  sliceEnd = genStart + SLICE_MS;
  while (count < cfg.length) {
    masked.set(logits.subarray(0, V));
    for (const b of banned) masked[b] = -Infinity;
    if (guard) for (let i = 0; i < V; i++) if (!guard.allowed[state * V + i]) masked[i] = -Infinity;
    const token = choose(masked, V, cfg, uniform, z, order);
    if (guard) state = guard.after[state * V + token];
    steps++;
    let piece = decoder.decode(vocab.bytes[token], { stream: true });
    if (piece) {
      const chars = [...piece], room = cfg.length - count;
      let finished = chars.length >= room;
      piece = chars.slice(0, room).join("");
      if (cfg.stop.length) { // cut right after the first stop sequence that ends in this piece
        const text = tail + piece;
        let end = -1;
        for (const s of cfg.stop) {
          const at = text.indexOf(s, Math.max(0, tail.length - s.length + 1));
          if (at >= 0 && (end < 0 || at + s.length < end)) end = at + s.length;
        }
        if (end >= 0) { piece = text.slice(tail.length, end); finished = true; reason = "stop"; }
      }
      count += [...piece].length;
      tail = (tail + piece).slice(-keep);
      pending += piece;
      if (finished) break;
    }
    logits = net.step(token);
    const now = performance.now();
    if (now - lastPost > 40 && pending) { postMessage({ type: "text", id, text: pending }); pending = ""; lastPost = now; }
    if (now > sliceEnd) {
      await yieldNow();
      if (current !== id) { reason = "stopped"; break; }
      sliceEnd = performance.now() + SLICE_MS;
    }
  }
  const seconds = (performance.now() - genStart) / 1000;
  if (pending) postMessage({ type: "text", id, text: pending });
  postMessage({ type: "done", id, reason, chars: count, steps, seconds, primeSeconds: (genStart - started) / 1000 });
}

onmessage = (event) => {
  const msg = event.data;
  if (msg.type === "load") {
    try {
      const t = performance.now();
      net = new Net(msg.model, msg.weights, msg.wasm);
      vocab = new Vocab(msg.model.vocab);
      postMessage({ type: "ready", engine: net.engine, seconds: (performance.now() - t) / 1000 });
    } catch (e) {
      postMessage({ type: "error", id: null, message: `The model could not be loaded: ${e.message}` });
    }
  } else if (msg.type === "generate") {
    current = msg.id;
    generate(msg).catch((e) => postMessage({ type: "error", id: msg.id, message: `Generation failed: ${e.message}` }));
  } else if (msg.type === "stop") {
    current = null;
  }
};
