// ws-subprocess browser client: a plain ES module, no build step. MIT.
//
// Speaks the channel protocol (v5.channel.k8s.io) to a ws-subprocess server:
// output, input, resizes, the exit status, and for named sessions the
// bookkeeping to resume (`since`) and reattach by itself after a dropped
// connection.
//
//   import { Session } from "./ws-subprocess.js";
//   const session = new Session({
//     url: "wss://host/ws",
//     token: () => fetch("/token").then((r) => r.text()),  // a fresh token each time
//     session: "u42-main",                                  // a named session, or null
//     onOutput: (bytes) => term.write(bytes),
//     onExit: ({ code }) => console.log("exit", code),
//   });
//   term.onData((text) => session.write(text));
//   term.onResize(({ cols, rows }) => session.resize(cols, rows));
//   session.start();
//
// Or let `connectTerminal` wire an xterm.js Terminal and a Session together
// with files and pictures (trzsz, ZMODEM, Sixel and iTerm2 images, the
// window title, links, search, Unicode 11 widths, OSC 52 clipboard writes);
// see its comment below:
//
//   const session = new Session({ url, token, session: "u42-main" });
//   const terminal = await connectTerminal(term, session, { assets: "/assets/modules/" });
//   session.start();

const STDIN = 0, STDOUT = 1, STDERR = 2, STATUS = 3, RESIZE = 4, SESSION = 5;
const PROTOCOL = "v5.channel.k8s.io";
const BEARER = "base64url.bearer.authorization.k8s.io.";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** The token as a bearer subprotocol (browsers cannot set headers). */
function bearer(token) {
  const base64 = btoa(String.fromCharCode(...encoder.encode(token)));
  return BEARER + base64.replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

export class Session {
  /**
   * @param {object} options
   * @param {string} options.url            the server's endpoint, ws:// or wss://
   * @param {() => Promise<string>|string} options.token  a fresh token for each connection
   * @param {string|null} [options.session] the named session's id (repeated as ?session= for balancers)
   * @param {boolean} [options.reattach]    reattach after a dropped connection (named sessions)
   * @param {(bytes: Uint8Array) => void} [options.onOutput]
   * @param {(exit: {code: number|null, status: object|null, reason: string}) => void} [options.onExit]
   * @param {(state: string, detail?: object) => void} [options.onState]
   * @param {number} [options.maxMessageSize] input longer than this goes in
   *   several messages (the server closes on messages over its max_message_size)
   */
  constructor({ url, token, session = null, reattach = true, onOutput, onExit, onState, maxMessageSize = 256 * 1024 }) {
    Object.assign(this, { url, token, session, reattach, maxMessageSize });
    this.onOutput = onOutput || (() => {});
    this.onExit = onExit || (() => {});
    this.onState = onState || (() => {});
    this.socket = null;
    this.size = null;
    this.ended = false;
    this.attempts = 0;
    this.retry = null;
    // Where this client is in the session's output: the offset its current
    // connection started at, the repaint bytes still to come (not session
    // output), and the session bytes received since.
    this.offset = null;
    this.repaintLeft = 0;
    this.received = 0;
  }

  /** Session output bytes this client has, for `since`. */
  get position() {
    return this.offset === null ? null : this.offset + this.received;
  }

  /** Opens the session (again, after a drop: from where it left off). */
  async start() {
    const token = await this.token();
    if (this.ended) return; // closed while waiting for the token
    const query = new URLSearchParams();
    if (this.session) query.set("session", this.session);
    if (this.position !== null) query.set("since", String(this.position));
    const url = this.url + (query.toString() ? "?" + query : "");
    const socket = new WebSocket(url, [PROTOCOL, bearer(token)]);
    socket.binaryType = "arraybuffer";
    this.socket = socket;
    let opened = false;
    socket.onopen = () => {
      opened = true;
      this.attempts = 0;
      this.onState("open");
      if (this.size) this.resize(this.size.cols, this.size.rows);
    };
    socket.onmessage = (event) => this.receive(new Uint8Array(event.data));
    socket.onclose = (event) => {
      if (socket !== this.socket) return;
      const normal = event.code === 1000 || (event.code >= 4000 && event.code < 4256);
      if (this.ended || normal) {
        this.ended = true;
        this.onExit({ code: this.exitCode ?? null, status: this.status ?? null, reason: event.reason });
        return;
      }
      // Dropped: a named session is still there for a while.
      if (this.session && this.reattach && event.code !== 1008 && this.attempts < 10) {
        this.attempts += 1;
        this.onState("reattaching", { code: event.code, opened });
        this.retry = setTimeout(() => this.start().catch((err) => this.onState("failed", { error: String(err) })), Math.min(250 * 2 ** this.attempts, 5000));
        return;
      }
      this.ended = true;
      this.onState("closed", { code: event.code, reason: event.reason, opened });
    };
  }

  receive(data) {
    const channel = data[0];
    const payload = data.subarray(1);
    if (channel === STDOUT || channel === STDERR) {
      const repaint = Math.min(this.repaintLeft, payload.length);
      this.repaintLeft -= repaint;
      this.received += payload.length - repaint;
      this.onOutput(payload);
    } else if (channel === SESSION) {
      const info = JSON.parse(decoder.decode(payload));
      this.offset = info.offset;
      this.repaintLeft = info.repaint || 0;
      this.received = 0;
      this.role = info.role;
      this.onState("attached", info);
    } else if (channel === STATUS) {
      this.status = JSON.parse(decoder.decode(payload));
      this.exitCode = this.status.status === "Success" ? 0 : Number(this.status.details?.causes?.[0]?.message);
      this.ended = true;
    }
  }

  send(channel, bytes) {
    if (!this.socket || this.socket.readyState !== WebSocket.OPEN) return;
    const most = Math.max(1, this.maxMessageSize || Infinity);
    let at = 0;
    do {
      const part = bytes.subarray(at, at + most);
      const message = new Uint8Array(part.length + 1);
      message[0] = channel;
      message.set(part, 1);
      this.socket.send(message);
      at += part.length;
    } while (at < bytes.length);
  }

  /** Types `text` (a string or bytes). */
  write(text) {
    this.send(STDIN, typeof text === "string" ? encoder.encode(text) : text);
  }

  /** Resizes the terminal (and remembers the size for reattaching). */
  resize(cols, rows) {
    this.size = { cols, rows };
    this.send(RESIZE, encoder.encode(JSON.stringify({ Width: cols, Height: rows })));
  }

  /** Leaves: a named session runs on (for its `keep`), a plain one ends. */
  close() {
    // Between a drop and the reattach there is no socket to close: the
    // pending reattach is called off and this is the end.
    const waiting = !this.ended && (!this.socket || this.socket.readyState === WebSocket.CLOSED);
    this.ended = true;
    clearTimeout(this.retry);
    if (waiting) this.onExit({ code: null, status: null, reason: "" });
    else if (this.socket) this.socket.close(1000);
  }
}

// ---------------------------------------------------------------------------
// The terminal side: an xterm.js Terminal, a Session, and what a terminal
// in a browser needs beyond bytes.
//
// The features come from optional peer packages, imported at run time from
// `assets` (a URL laid out as node_modules is); a missing package turns its
// feature off with one console line and the terminal works on without it:
//
//   trzsz      `trz` / `tsz` (the npm package trzsz)
//   zmodem     lrzsz's `rz` / `sz` (zmodem.js, CommonJS: see loadCommonJS)
//   image      Sixel and iTerm2 inline images (@xterm/addon-image)
//   links      clickable URLs (@xterm/addon-web-links)
//   search     Ctrl+Shift+F and an API (@xterm/addon-search)
//   unicode11  Unicode 11 character widths (@xterm/addon-unicode11; the
//              Terminal needs `allowProposedApi: true`)
//   clipboard  OSC 52 clipboard writes, only with `clipboard: true`
//              (@xterm/addon-clipboard); a read gets an empty answer
//   title      OSC 0/2 sets document.title (no package)
//
// Transfers belong to the writer: an observer (`observer: true`, or a
// session whose server says role "observer") gets none of the transfer
// machinery, and the server shows observers and replays a one-line note
// instead of a transfer's bytes. A reattach cuts a transfer's bytes in two,
// so one in flight is aborted then, with a message in the terminal.

/** The optional packages, by feature: their path under `assets`. */
const PEERS = {
  image: "@xterm/addon-image/lib/addon-image.mjs",
  search: "@xterm/addon-search/lib/addon-search.mjs",
  links: "@xterm/addon-web-links/lib/addon-web-links.mjs",
  unicode11: "@xterm/addon-unicode11/lib/addon-unicode11.mjs",
  clipboard: "@xterm/addon-clipboard/lib/addon-clipboard.mjs",
  trzsz: "trzsz/lib/trzsz.mjs",
  zmodem: "zmodem.js/src/zmodem.js",
  "crc-32": "crc-32/crc32.js",
};

const loaded = new Map(); // URL -> Promise of the module (shared by terminals)

/**
 * Loads a CommonJS package without a build step: fetches `url` and,
 * recursively, every `require("./relative")` and `require("<package>")`
 * named in `packages` (package name -> URL), then evaluates each once with
 * `new Function("module", "exports", "require", source)`. zmodem.js ships
 * only CommonJS sources (its dist/ is empty). A page whose Content Security
 * Policy forbids 'unsafe-eval' cannot run this: allow it, or go without
 * ZMODEM (`zmodem: false`).
 * @returns {Promise<object>} the entry module's exports
 */
export async function loadCommonJS(url, packages = {}) {
  const sources = new Map(); // URL -> { text, deps: Map(specifier -> URL) }
  const resolve = (from, specifier) => {
    if (specifier.startsWith("./") || specifier.startsWith("../")) {
      const resolved = new URL(specifier, from).href;
      return /\.c?js$/.test(resolved) ? resolved : resolved + ".js";
    }
    if (packages[specifier]) return new URL(packages[specifier], location.href).href;
    throw new Error(`${from} requires ${specifier}, which is not given`);
  };
  const fetchTree = async (at) => {
    if (sources.has(at)) return;
    sources.set(at, null);
    const response = await fetch(at);
    if (!response.ok) throw new Error(`${at}: HTTP ${response.status}`);
    const text = await response.text();
    const deps = new Map();
    for (const [, , specifier] of text.matchAll(/\brequire\(\s*(["'])([^"'\n]+)\1\s*\)/g)) {
      deps.set(specifier, resolve(at, specifier));
    }
    sources.set(at, { text, deps });
    await Promise.all([...deps.values()].map(fetchTree));
  };
  const entry = new URL(url, location.href).href;
  await fetchTree(entry);
  const modules = new Map();
  const evaluate = (at) => {
    if (modules.has(at)) return modules.get(at).exports;
    const module = { exports: {} };
    modules.set(at, module);
    const { text, deps } = sources.get(at);
    const require = (specifier) => {
      if (!deps.has(specifier)) throw new Error(`${at}: require(${specifier}) was not found in advance`);
      return evaluate(deps.get(specifier));
    };
    new Function("module", "exports", "require", `${text}\n//# sourceURL=${at}`)(module, module.exports, require);
    return module.exports;
  };
  return evaluate(entry);
}

/** The URL of a peer: `modules[name]`, else its path under `assets`. */
function peerUrl(name, { assets, modules = {} }) {
  if (modules[name]) return new URL(modules[name], location.href).href;
  if (assets == null) return null;
  return new URL(PEERS[name], new URL(assets, location.href)).href;
}

async function loadPeer(name, options) {
  const url = peerUrl(name, options);
  if (!url) throw new Error("no `assets` URL given");
  if (!loaded.has(url)) {
    const load = name === "zmodem"
      ? loadCommonJS(url, { "crc-32": peerUrl("crc-32", options) }).then((zmodem) => patchZmodem(zmodem))
      : import(url);
    loaded.set(url, load);
    load.catch(() => loaded.delete(url));
  }
  return loaded.get(url);
}

const textEncoder = new TextEncoder();

/** Whether `haystack` holds `needle` (bytes) from `from` on; its index or -1. */
function indexOfBytes(haystack, needle, from = 0) {
  const first = needle[0];
  for (let i = haystack.indexOf(first, from); i !== -1 && i + needle.length <= haystack.length; i = haystack.indexOf(first, i + 1)) {
    let j = 1;
    while (j < needle.length && haystack[i + j] === needle[j]) j++;
    if (j === needle.length) return i;
  }
  return -1;
}

/** How many bytes at the end of `bytes` are a proper prefix of `needle`. */
function partialSuffix(bytes, needle) {
  for (let n = Math.min(needle.length - 1, bytes.length); n > 0; n--) {
    let j = 0;
    while (j < n && bytes[bytes.length - n + j] === needle[j]) j++;
    if (j === n) return n;
  }
  return 0;
}

/** `parts` (Uint8Arrays or arrays of numbers) one after another, as one Uint8Array. */
function concatBytes(parts) {
  let length = 0;
  for (const part of parts) length += part.length;
  const out = new Uint8Array(length);
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

// A ZMODEM hex header starts "**", ZDLE, "B": sz's ZRQINIT and rz's ZRINIT.
const ZMODEM_HEADER = Uint8Array.of(0x2a, 0x2a, 0x18, 0x42);
const ZMODEM_HEADER_LENGTH = 21; // the longest hex header, with CR LF XON
const ZMODEM_CANCEL = Uint8Array.of(...Array(10).fill(0x18), ...Array(10).fill(0x08));
const TRZSZ_MAGIC = textEncoder.encode("::TRZSZ:TRANSFER:");

/** Offers `blob` as a download named `name` (an <a download> click). */
export function saveBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  link.style.display = "none";
  document.body.append(link);
  link.click();
  link.remove();
  // Revoking at once can cancel the download in some browsers.
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

function abortError() {
  return new DOMException("The user aborted a request.", "AbortError");
}

function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

// Portable file pickers for trzsz. trzsz (in a browser) asks for files with
// the File System Access API: window.showOpenFilePicker for `trz`,
// showDirectoryPicker for `trz -d` and, writing through
// getFileHandle(name, {create: true}).createWritable(), for `tsz`. Firefox
// and Safari have neither, and automation (Playwright) cannot drive the
// native pickers. So connectTerminal installs stand-ins for the life of the
// terminal (and puts the page's own back on dispose), unless the page asks
// for `nativePickers: true` and the browser has them:
//   - uploads go through an ordinary <input type=file multiple> (with
//     webkitdirectory for `trz -d`), clicked at once while the page has a
//     user activation (the Enter that started `trz`), else from a small
//     "Choose files to upload" button over the terminal (a click is one);
//   - downloads collect the written chunks into a Blob and save it with an
//     <a download=name> click, one download per file.
// Each terminal with transfers registers here; the pickers serve the one
// whose output announced the transfer last.
const pickerUsers = [];
let savedPickers = null;

function pickerOwner() {
  let best = pickerUsers[pickerUsers.length - 1];
  for (const user of pickerUsers) if (user.lastTrzsz > best.lastTrzsz) best = user;
  return best;
}

function installPickers(user) {
  if (!pickerUsers.length) {
    savedPickers = {};
    for (const name of ["showOpenFilePicker", "showDirectoryPicker"]) {
      savedPickers[name] = Object.getOwnPropertyDescriptor(window, name);
    }
    window.showOpenFilePicker = (options) => pickerOwner().openFilePicker(options);
    window.showDirectoryPicker = (options) => pickerOwner().directoryPicker(options);
  }
  pickerUsers.push(user);
}

function uninstallPickers(user) {
  const at = pickerUsers.indexOf(user);
  if (at === -1) return;
  pickerUsers.splice(at, 1);
  if (pickerUsers.length) return;
  for (const [name, descriptor] of Object.entries(savedPickers)) {
    if (descriptor) Object.defineProperty(window, name, descriptor);
    else delete window[name];
  }
  savedPickers = null;
}

/** A FileSystemFileHandle look-alike for a File (what trzsz reads). */
function fileHandle(file) {
  return { kind: "file", name: file.name, getFile: async () => file };
}

/** A FileSystemDirectoryHandle look-alike over files chosen with
 * webkitdirectory (their webkitRelativePath). */
function directoryHandle(files) {
  const node = (name) => ({ name, dirs: new Map(), files: new Map() });
  const root = node(files[0]?.webkitRelativePath.split("/")[0] || "upload");
  for (const file of files) {
    const parts = (file.webkitRelativePath || `${root.name}/${file.name}`).split("/").slice(1);
    let dir = root;
    for (const part of parts.slice(0, -1)) {
      if (!dir.dirs.has(part)) dir.dirs.set(part, node(part));
      dir = dir.dirs.get(part);
    }
    dir.files.set(parts[parts.length - 1], file);
  }
  const handle = (dir) => ({
    kind: "directory",
    name: dir.name,
    async *values() {
      for (const sub of dir.dirs.values()) yield handle(sub);
      for (const file of dir.files.values()) yield fileHandle(file);
    },
    async getFileHandle(name) {
      if (!dir.files.has(name)) throw new DOMException(name, "NotFoundError");
      return fileHandle(dir.files.get(name));
    },
    async getDirectoryHandle(name) {
      if (!dir.dirs.has(name)) throw new DOMException(name, "NotFoundError");
      return handle(dir.dirs.get(name));
    },
  });
  return handle(root);
}

/** A writable FileSystemDirectoryHandle look-alike whose files become
 * downloads (files in subdirectories are named `dir_sub_file`). */
function downloadDirectory(name, onSaved, path = []) {
  return {
    kind: "directory",
    name,
    async *values() {}, // nothing is there yet: trzsz never renames
    async getDirectoryHandle(sub) {
      return downloadDirectory(sub, onSaved, [...path, sub]);
    },
    async getFileHandle(file) {
      const saveAs = [...path.slice(1), file].join("_");
      return {
        kind: "file",
        name: file,
        async createWritable() {
          const chunks = [];
          let bytes = 0;
          return {
            async write(data) {
              if (data && data.type === "write") data = data.data;
              if (data instanceof ArrayBuffer) data = new Uint8Array(data.slice(0));
              else if (ArrayBuffer.isView(data)) data = new Uint8Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength));
              bytes += data.size ?? data.length;
              chunks.push(data);
            },
            async close() {
              saveBlob(new Blob(chunks), saveAs);
              onSaved(saveAs, bytes);
            },
            async abort() {
              chunks.length = 0;
            },
          };
        },
      };
    },
  };
}

/**
 * Connects an xterm.js Terminal and a Session: output, input, resizes, the
 * title, and the optional features above. Call it before `session.start()`;
 * it takes over `session.onOutput` (the terminal shows the output) and
 * wraps `session.onState`.
 *
 * @param {Terminal} term      an xterm.js Terminal, already open()ed
 * @param {Session} session
 * @param {object} [options]
 * @param {string|URL} [options.assets]  where the optional packages are, laid
 *   out as node_modules (e.g. "/assets/modules/"); without it they are all off
 * @param {object} [options.modules]     a URL per feature (or "crc-32"), over `assets`
 * @param {boolean} [options.observer]   this page only watches: no input, no transfers
 * @param {boolean} [options.trzsz]      default true; likewise zmodem, image,
 *   links, search, unicode11, title (false turns one off)
 * @param {boolean} [options.clipboard]  OSC 52 writes reach the clipboard (default false)
 * @param {(text: string) => void} [options.onClipboard]  an OSC 52 write has
 *   reached the clipboard (with `clipboard: true`): `text` is what it holds now
 * @param {boolean} [options.nativePickers]  keep the browser's File System
 *   Access pickers where it has them (default: portable pickers)
 * @param {(event: MouseEvent, uri: string) => void} [options.linkHandler]
 * @param {(event: object) => void} [options.onTransfer]  {protocol, direction,
 *   state: "start"|"progress"|"file"|"done"|"failed"|"aborted", name?, bytes?, total?, error?}
 * @returns {Promise<object>} {features, search, transfer, uploadFiles(files), abortTransfer(reason), dispose()}
 */
export async function connectTerminal(term, session, options = {}) {
  const link = new TerminalLink(term, session, options);
  await link.load();
  return link.api();
}

class TerminalLink {
  constructor(term, session, options) {
    Object.assign(this, { term, session, options });
    this.log = options.log || ((line) => console.info(line));
    this.onTransfer = options.onTransfer || (() => {});
    this.observer = !!options.observer;
    this.features = {};
    this.addons = [];
    this.disposables = [];
    this.ready = false;
    this.early = [];
    this.transfer = null;
    this.lastTrzsz = 0;
    this.held = null; // output held back: maybe the start of a ZMODEM header
    this.picker = null;
    this.pendingDrop = null;
    this.reattaching = false;

    // Output, input and resizes.
    this.pageOnOutput = session.onOutput;
    this.pageOnState = session.onState;
    session.onOutput = (bytes) => this.output(bytes);
    session.onState = (state, detail) => {
      this.state(state, detail);
      this.pageOnState(state, detail);
    };
    this.listen(term.onData((text) => this.input(text)));
    this.listen(term.onBinary((text) => this.input(text, true)));
    this.listen(term.onResize(({ cols, rows }) => {
      if (this.watching) return;
      session.resize(cols, rows);
      this.trzsz?.setTerminalColumns(cols);
    }));
    if (!this.observer) session.size = { cols: term.cols, rows: term.rows };
  }

  /** Whether this page only watches. */
  get watching() {
    return this.observer || this.session.role === "observer";
  }

  listen(disposable) {
    this.disposables.push(typeof disposable === "function" ? { dispose: disposable } : disposable);
  }

  wanted(name) {
    return name === "clipboard" ? this.options.clipboard === true : this.options[name] !== false;
  }

  async load() {
    const names = ["image", "links", "search", "unicode11", "clipboard"];
    if (!this.observer) names.push("trzsz", "zmodem");
    const peers = await Promise.all(names.map(async (name) => {
      if (!this.wanted(name)) return [name, null];
      try {
        return [name, await loadPeer(name, this.options)];
      } catch (err) {
        this.log(`ws-subprocess.js: ${name} is off (${PEERS[name]} did not load: ${err.message || err})`);
        return [name, null];
      }
    }));
    for (const [name, peer] of peers) {
      this.features[name] = false;
      if (!peer) continue;
      try {
        this.features[name] = this.enable(name, peer) !== false;
      } catch (err) {
        this.log(`ws-subprocess.js: ${name} is off (${err.message || err})`);
      }
    }
    if (this.observer) this.features.trzsz = this.features.zmodem = false;
    this.features.title = this.wanted("title");
    if (this.features.title) {
      const setTitle = typeof this.options.title === "function" ? this.options.title : (title) => { document.title = title; };
      this.listen(this.term.onTitleChange(setTitle));
    }
    if (this.features.trzsz || this.features.zmodem) this.enableDrop();
    this.ready = true;
    for (const bytes of this.early.splice(0)) this.output(bytes);
  }

  enable(name, peer) {
    const term = this.term;
    const proposed = !!term.options.allowProposedApi;
    switch (name) {
      case "image": {
        this.addon(new peer.ImageAddon({ sixelSupport: true, iipSupport: true }));
        return;
      }
      case "links": {
        this.addon(new peer.WebLinksAddon(this.options.linkHandler));
        return;
      }
      case "unicode11": {
        if (!proposed) throw new Error("the Terminal needs allowProposedApi: true");
        this.addon(new peer.Unicode11Addon());
        term.unicode.activeVersion = "11";
        return;
      }
      case "clipboard": {
        // Writes only; a read (OSC 52 "?") is answered with nothing, so a
        // program never learns what the clipboard holds.
        const provider = {
          readText: () => "",
          writeText: (_selection, text) => navigator.clipboard.writeText(text).then(() => this.options.onClipboard?.(text)),
        };
        this.addon(new peer.ClipboardAddon(undefined, provider));
        return;
      }
      case "search": {
        this.searchAddon = this.addon(new peer.SearchAddon());
        this.searchDecorations = proposed;
        this.enableSearchKey();
        return;
      }
      case "trzsz": {
        this.trzsz = new peer.TrzszFilter({
          writeToTerminal: (data) => this.show(data),
          sendToServer: (data) => this.session.write(data),
          terminalColumns: term.cols,
          // Each chunk is one write; the Session splits long ones anyway.
          maxDataChunkSize: 10 * 1024 * 1024,
        });
        this.keepNative = this.options.nativePickers && typeof window.showOpenFilePicker === "function";
        if (!this.keepNative) {
          installPickers(this);
          this.listen(() => uninstallPickers(this));
        }
        return;
      }
      case "zmodem": {
        this.Zmodem = peer;
        this.newSentry();
        return;
      }
    }
  }

  addon(addon) {
    this.term.loadAddon(addon);
    this.addons.push(addon);
    return addon;
  }

  // --- Output --------------------------------------------------------------

  output(bytes) {
    if (!this.ready) {
      this.early.push(bytes);
      return;
    }
    if (this.watching) {
      this.term.write(bytes);
      return;
    }
    if (this.zsession || this.zdetection) {
      this.consumeZmodem(bytes);
      return;
    }
    if (this.trzsz && this.trzsz.isTransferringFiles()) {
      this.trzsz.processServerOutput(bytes);
      return;
    }
    if (!this.Zmodem) {
      this.passOn(bytes);
      return;
    }
    // Look for a ZMODEM header, holding back what may be its beginning.
    if (this.held) {
      bytes = concatBytes([this.held, bytes]);
      this.held = null;
      clearTimeout(this.heldTimer);
    }
    const at = indexOfBytes(bytes, ZMODEM_HEADER);
    if (at === -1) {
      const keep = partialSuffix(bytes, ZMODEM_HEADER);
      this.passOn(keep ? bytes.subarray(0, bytes.length - keep) : bytes);
      if (keep) this.hold(bytes.subarray(bytes.length - keep));
      return;
    }
    if (at) this.passOn(bytes.subarray(0, at));
    if (bytes.length - at < ZMODEM_HEADER_LENGTH) {
      this.hold(bytes.subarray(at));
      return;
    }
    this.consumeZmodem(bytes.subarray(at));
  }

  /** Holds `bytes` back for a moment: the start of a ZMODEM header, maybe. */
  hold(bytes) {
    this.held = bytes;
    this.heldTimer = setTimeout(() => {
      const held = this.held;
      this.held = null;
      if (held && held.length >= ZMODEM_HEADER_LENGTH) this.consumeZmodem(held);
      else if (held) this.passOn(held);
    }, 30);
  }

  /** Output that is no ZMODEM's: through trzsz (which shows it), or shown. */
  passOn(bytes) {
    if (!bytes.length) return;
    if (this.trzsz) {
      const magic = indexOfBytes(bytes, TRZSZ_MAGIC);
      if (magic !== -1) this.trzszStarting(bytes[magic + TRZSZ_MAGIC.length]);
      this.trzsz.processServerOutput(bytes);
    } else {
      this.term.write(bytes);
    }
  }

  /** Shows what trzsz writes (its progress, its messages, the output). */
  show(data) {
    if (typeof data === "string" || data instanceof Uint8Array) this.term.write(data);
    else if (data instanceof ArrayBuffer) this.term.write(new Uint8Array(data));
    else if (data instanceof Blob) data.arrayBuffer().then((buffer) => this.term.write(new Uint8Array(buffer)));
  }

  // --- Input ---------------------------------------------------------------

  input(text, binary = false) {
    if (this.watching) return;
    if (this.picker && text === "\x03") {
      this.picker.resolve(null);
      return;
    }
    if (this.zsession || this.zdetection) {
      if (text === "\x03") this.abortTransfer("cancelled");
      return; // keystrokes would corrupt the transfer
    }
    if (this.trzsz) {
      if (binary) this.trzsz.processBinaryInput(text);
      else this.trzsz.processTerminalInput(text);
      return;
    }
    if (binary) this.session.write(Uint8Array.from(text, (c) => c.charCodeAt(0)));
    else this.session.write(text);
  }

  // --- Session states ------------------------------------------------------

  state(state, detail) {
    if (state === "reattaching") this.reattaching = true;
    if (state !== "attached") return;
    // A session info message: the first, one after a reattach, or one in
    // the middle of the output (a transfer note's start or end), which
    // changes nothing here.
    if (this.reattaching) {
      this.reattaching = false;
      if (this.transfer || this.picker || this.zdetection) {
        this.abortTransfer("the connection was re-established, and a transfer cannot continue across it");
      }
    }
    if (detail && detail.role === "observer" && this.trzsz) {
      // The server says this page watches: no transfers, ever.
      uninstallPickers(this);
      this.trzsz = null;
      this.Zmodem = null;
      this.features.trzsz = this.features.zmodem = false;
    }
  }

  // --- Transfers -----------------------------------------------------------

  begin(protocol, direction, extra = {}) {
    this.transfer = { protocol, direction, bytes: 0, total: null, name: null, started: performance.now(), ...extra };
    this.onTransfer({ state: "start", ...this.transfer });
  }

  end(state, extra = {}) {
    if (!this.transfer) return;
    const transfer = this.transfer;
    this.transfer = null;
    this.onTransfer({ ...transfer, state, ...extra });
  }

  /** A `::TRZSZ:TRANSFER:<mode>` went by: trzsz starts a transfer. */
  trzszStarting(mode) {
    this.lastTrzsz = performance.now();
    const direction = mode === 0x53 /* S */ ? "download" : "upload";
    if (this.transfer) return;
    this.begin("trzsz", direction);
    const started = performance.now();
    let seenBusy = false;
    clearInterval(this.trzszWatch);
    this.trzszWatch = setInterval(() => {
      // trzsz takes the transfer up a moment after its announcement (or
      // never, for one it has seen before): over once it was busy and is
      // no longer, or when it has not been busy within 2 seconds.
      const busy = !!this.trzsz && this.trzsz.isTransferringFiles();
      seenBusy ||= busy;
      if (busy || (!seenBusy && performance.now() - started < 2000)) return;
      clearInterval(this.trzszWatch);
      if (this.transfer && this.transfer.protocol === "trzsz") this.end("done");
    }, 100);
  }

  /** Aborts the transfer in flight (or a file choice), if any. */
  abortTransfer(reason = "aborted") {
    this.aborting = true;
    try {
      this.abortNow(reason);
    } finally {
      this.aborting = false;
    }
  }

  abortNow(reason) {
    if (this.picker) this.picker.resolve(null);
    this.pendingDrop = null;
    let aborted = false;
    if (this.zsession || this.zdetection) {
      try {
        if (this.zsession) {
          // zmodem.js's abort sends 5 CANs; lrzsz, reading one of them as
          // a possible header, may then see only 4. Ten, as lrzsz itself
          // cancels (and backspaces to erase them from a shell).
          this.zsession._sender = () => {};
          this.zsession.abort();
        } else {
          this.zdetection.deny();
        }
      } catch {
        // already over
      }
      this.session.write(ZMODEM_CANCEL);
      this.zsession = this.zdetection = null;
      this.newSentry();
      aborted = true;
    }
    if (this.trzsz && this.trzsz.isTransferringFiles()) {
      this.trzsz.stopTransferringFiles();
      aborted = true;
    }
    if (aborted || this.transfer) {
      this.term.write(`\r\n\x1b[33m[file transfer aborted: ${reason}]\x1b[0m\r\n`);
      this.end("aborted", { error: reason });
    }
  }

  // ZMODEM, with zmodem.js's Sentry: it finds sessions in the output; a
  // download (sz) is accepted at once and saved as a Blob, an upload (rz)
  // is confirmed once files are chosen.

  newSentry() {
    const Zmodem = this.Zmodem;
    this.sentry = new Zmodem.Sentry({
      to_terminal: (octets) => this.passOn(octets instanceof Uint8Array ? octets : Uint8Array.from(octets)),
      sender: (octets) => this.sendZmodem(octets),
      on_detect: (detection) => this.zmodemDetected(detection),
      on_retract: () => {
        this.zdetection = null;
        // A detection replaced by a new one is retracted first; only a
        // retraction not followed by one ends the wait for files.
        queueMicrotask(() => {
          if (!this.zdetection && !this.zsession && this.picker) this.picker.resolve(null);
        });
      },
    });
  }

  consumeZmodem(bytes) {
    // zmodem.js works on arrays of numbers: small slices keep them short.
    const SLICE = 8192;
    try {
      for (let at = 0; at < bytes.length; at += SLICE) {
        const slice = bytes.subarray(at, at + SLICE);
        if (!this.zsession && !this.zdetection && at) {
          // The session ended within this chunk: the rest is output again.
          this.output(bytes.subarray(at));
          return;
        }
        this.sentry.consume(slice);
      }
    } catch (err) {
      const message = err && err.message ? err.message : String(err);
      this.zsession = this.zdetection = null;
      this.newSentry();
      this.term.write(`\r\n\x1b[31m[ZMODEM: ${message}]\x1b[0m\r\n`);
      this.end("failed", { error: message });
    }
  }

  zmodemDetected(detection) {
    if (this.watching) {
      detection.deny();
      return;
    }
    if (detection.get_session_role() === "receive") {
      this.receiveZmodem(detection.confirm());
      return;
    }
    // An upload: confirmed once there are files (rz repeats its ZRINIT
    // meanwhile, each one a new detection).
    const waiting = !!this.zdetection || !!this.picker;
    this.zdetection = detection;
    if (waiting) return;
    this.begin("zmodem", "upload");
    this.chooseFiles({ multiple: true }).then(
      (files) => this.sendZmodemFiles(files),
      (err) => this.end("failed", { error: String(err) }),
    );
  }

  sendZmodem(octets) {
    // Octets arrive as arrays, a header or a subpacket at a time: batched
    // into one message per turn of the event loop.
    (this.zout ||= []).push(octets);
    if (this.zout.length > 1) return;
    queueMicrotask(() => {
      const parts = this.zout;
      this.zout = null;
      this.session.write(concatBytes(parts));
    });
  }

  receiveZmodem(zsession) {
    this.zsession = zsession;
    this.zdetection = null;
    this.begin("zmodem", "download");
    const progress = this.progress();
    zsession.on("offer", (offer) => {
      const { name, size } = offer.get_details();
      const chunks = [];
      let bytes = 0;
      Object.assign(this.transfer || {}, { name, total: size ?? null, bytes: 0 });
      progress(name, 0, size, true);
      offer.accept({
        on_input: (payload) => {
          chunks.push(payload instanceof Uint8Array ? payload : Uint8Array.from(payload));
          bytes += payload.length;
          if (this.transfer) this.transfer.bytes = bytes;
          progress(name, bytes, size);
        },
      }).then(() => {
        progress(name, bytes, size, true);
        this.term.write("\r\n");
        saveBlob(new Blob(chunks), name);
        this.onTransfer({ ...this.transfer, state: "file", name, bytes });
      });
    });
    zsession.on("session_end", () => {
      if (this.zsession === zsession) this.zsession = null;
      if (!this.aborting) this.end(zsession.aborted() ? "failed" : "done");
    });
    zsession.start();
  }

  async sendZmodemFiles(files) {
    const detection = this.zdetection;
    if (!detection || !detection.is_valid()) {
      this.zdetection = null;
      this.end("failed", { error: "rz went away" });
      return;
    }
    const zsession = detection.confirm();
    this.zsession = zsession;
    this.zdetection = null;
    zsession.on("session_end", () => {
      if (this.zsession === zsession) this.zsession = null;
    });
    const progress = this.progress();
    try {
      let remaining = 0;
      for (const file of files || []) remaining += file.size;
      for (const [index, file] of (files || []).entries()) {
        const transfer = await zsession.send_offer({
          name: file.name,
          size: file.size,
          mtime: new Date(file.lastModified),
          files_remaining: files.length - index,
          bytes_remaining: remaining,
        });
        remaining -= file.size;
        if (!transfer) {
          this.term.write(`\r\nzmodem: ${file.name} skipped by the receiver\r\n`);
          continue;
        }
        if (this.transfer) Object.assign(this.transfer, { name: file.name, total: file.size });
        let offset = transfer.get_offset();
        const PIECE = 1 << 18;
        do {
          const piece = new Uint8Array(await file.slice(offset, offset + PIECE).arrayBuffer());
          if (zsession.aborted()) throw new Error("aborted");
          offset += piece.length;
          if (offset >= file.size) {
            progress(file.name, offset, file.size, true);
            await transfer.end(piece);
          } else {
            transfer.send(piece);
            progress(file.name, offset, file.size);
            await this.drain();
          }
          if (this.transfer) this.transfer.bytes = offset;
        } while (offset < file.size);
        this.term.write("\r\n");
        this.onTransfer({ ...this.transfer, state: "file", name: file.name, bytes: file.size });
      }
      await zsession.close();
      this.end("done");
    } catch (err) {
      if (this.zsession === zsession) {
        this.zsession = null;
        try {
          zsession.abort();
        } catch {
          // over already
        }
        this.newSentry();
      }
      this.end("failed", { error: String(err && err.message ? err.message : err) });
    }
  }

  /** Waits while the socket holds much unsent: zmodem.js never waits. */
  async drain() {
    const socket = this.session.socket;
    while (socket && socket.readyState === WebSocket.OPEN && socket.bufferedAmount > (1 << 20)) {
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }

  /** A progress line in the terminal, rewritten in place (10 times a second). */
  progress() {
    let last = 0;
    const started = performance.now();
    return (name, bytes, total, force = false) => {
      const now = performance.now();
      if (!force && now - last < 100) return;
      last = now;
      const seconds = Math.max((now - started) / 1000, 0.001);
      const percent = total ? ` ${Math.floor((bytes / total) * 100)}%` : "";
      const of = total ? ` of ${formatBytes(total)}` : "";
      const rate = `${formatBytes(Math.round(bytes / seconds))}/s`;
      const direction = this.transfer ? this.transfer.direction : "";
      this.term.write(`\r\x1b[2Kzmodem ${direction} ${name}: ${formatBytes(bytes)}${of}${percent}, ${rate}`);
      if (this.transfer) this.onTransfer({ ...this.transfer, state: "progress", name, bytes, total });
    };
  }

  // --- Files from the user ---------------------------------------------------

  /** The files the user picks (or dropped): an array, or null if none. */
  chooseFiles({ multiple = true, directory = false } = {}) {
    if (this.pendingDrop && performance.now() < this.pendingDrop.until) {
      const files = this.pendingDrop.files;
      this.pendingDrop = null;
      return Promise.resolve(files);
    }
    this.pendingDrop = null;
    if (this.picker) this.picker.resolve(null);
    // The browser's own picker, when the page keeps it (another terminal
    // may have put stand-ins on window: the saved one is the browser's).
    const native = !this.options.nativePickers ? null
      : savedPickers ? savedPickers.showOpenFilePicker?.value : window.showOpenFilePicker;
    if (typeof native === "function" && !directory) {
      return native.call(window, { multiple }).then(
        (handles) => Promise.all(handles.map((handle) => handle.getFile())),
        () => null,
      );
    }
    return new Promise((resolve) => {
      const input = document.createElement("input");
      input.type = "file";
      input.multiple = multiple;
      if (directory) input.webkitdirectory = true;
      input.style.display = "none";
      const overlay = document.createElement("div");
      const picker = {
        resolve: (files) => {
          if (this.picker !== picker) return;
          this.picker = null;
          overlay.remove();
          input.remove();
          this.term.focus();
          resolve(files && files.length ? [...files] : null);
        },
      };
      this.picker = picker;
      input.addEventListener("change", () => picker.resolve(input.files));
      input.addEventListener("cancel", () => picker.resolve(null));
      (this.term.element || document.body).append(input);
      if (navigator.userActivation && navigator.userActivation.isActive) {
        input.click();
        return;
      }
      // No user activation to open the chooser with: a button the user
      // clicks does (or drop files here).
      overlay.className = "ws-subprocess-picker";
      overlay.style.cssText = "position:absolute;inset:0;display:flex;align-items:center;justify-content:center;" +
        "gap:8px;background:rgba(0,0,0,.55);z-index:20;font:14px system-ui,sans-serif";
      const button = (label, action) => {
        const element = document.createElement("button");
        element.type = "button";
        element.textContent = label;
        element.style.cssText = "padding:8px 14px;font:inherit;cursor:pointer";
        element.addEventListener("click", action);
        overlay.append(element);
        return element;
      };
      button(directory ? "Choose a folder to upload" : "Choose files to upload", () => input.click());
      button("Cancel", () => picker.resolve(null));
      (this.term.element || document.body).append(overlay);
    });
  }

  async openFilePicker(options = {}) {
    const files = await this.chooseFiles({ multiple: options.multiple !== false });
    if (!files) throw abortError();
    return files.map(fileHandle);
  }

  async directoryPicker(options = {}) {
    if (options.mode === "readwrite" || options.id === "trzsz_download") {
      return downloadDirectory("Downloads", (name, bytes) => {
        this.onTransfer({ ...(this.transfer || { protocol: "trzsz", direction: "download" }), state: "file", name, bytes });
      });
    }
    const files = await this.chooseFiles({ directory: true });
    if (!files) throw abortError();
    return directoryHandle(files);
  }

  /** Drag and drop onto the terminal: the files go to a waiting file
   * choice, else they are uploaded with `trz` (as trzsz's uploadFiles). */
  enableDrop() {
    const element = this.term.element;
    if (!element) return;
    const hasFiles = (event) => event.dataTransfer && [...event.dataTransfer.types].includes("Files");
    const over = (event) => {
      if (!hasFiles(event) || this.watching) return;
      event.preventDefault();
      event.dataTransfer.dropEffect = "copy";
    };
    const drop = (event) => {
      if (!hasFiles(event) || this.watching) return;
      event.preventDefault();
      event.stopPropagation();
      this.uploadFiles(event.dataTransfer).catch((err) => this.term.write(`\r\n\x1b[31m[upload: ${err.message || err}]\x1b[0m\r\n`));
    };
    element.addEventListener("dragover", over, true);
    element.addEventListener("drop", drop, true);
    this.listen(() => {
      element.removeEventListener("dragover", over, true);
      element.removeEventListener("drop", drop, true);
    });
  }

  /**
   * Uploads `files` (a DataTransfer, a FileList or an array of Files): to a
   * file choice that waits, else with trzsz (Ctrl+C, then `trz`). A
   * DataTransfer must be passed while its event is being dispatched.
   */
  async uploadFiles(files) {
    if (this.watching) throw new Error("an observer does not upload");
    let items = null;
    if (typeof DataTransfer !== "undefined" && files instanceof DataTransfer) {
      items = files.items;
      files = files.files;
    }
    files = [...files];
    if (!files.length) throw new Error("no files");
    if (this.picker) {
      this.picker.resolve(files);
      return;
    }
    if (!this.trzsz) throw new Error("uploads by drag and drop need trzsz");
    if (this.transfer || this.trzsz.isTransferringFiles()) throw new Error("a transfer is running");
    // trzsz reads dropped folders through their entries; files dropped by
    // hand-made DataTransfers have none, and go the way of a file choice.
    const entries = items ? [...items].filter((item) => item.kind === "file").map((item) => item.webkitGetAsEntry?.()) : [];
    if (entries.length && entries.every(Boolean) && entries.some((entry) => entry.isDirectory)) {
      await this.trzsz.uploadFiles(items);
      return;
    }
    this.pendingDrop = { files, until: performance.now() + 5000 };
    this.session.write("\x03");
    await new Promise((resolve) => setTimeout(resolve, 200));
    this.session.write("trz\r");
  }

  // --- Search --------------------------------------------------------------

  searchOptions(extra = {}) {
    const options = { ...extra };
    if (this.searchDecorations && !options.decorations) {
      options.decorations = {
        matchBackground: "#665500",
        activeMatchBackground: "#d4a017",
        matchOverviewRuler: "#d4a017",
        activeMatchColorOverviewRuler: "#ffcc00",
      };
    }
    return options;
  }

  enableSearchKey() {
    const element = this.term.element;
    if (!element) return;
    const key = (event) => {
      if (event.ctrlKey && event.shiftKey && (event.key === "F" || event.key === "f")) {
        event.preventDefault();
        event.stopPropagation();
        this.openSearch();
      }
    };
    element.addEventListener("keydown", key, true);
    this.listen(() => element.removeEventListener("keydown", key, true));
  }

  openSearch(text) {
    if (!this.searchBox) {
      const box = document.createElement("div");
      box.className = "ws-subprocess-search";
      box.style.cssText = "position:absolute;top:6px;right:18px;z-index:15;display:flex;gap:4px;align-items:center;" +
        "padding:4px 6px;background:#252526;border:1px solid #555;border-radius:4px;font:13px system-ui,sans-serif;color:#ddd";
      const input = document.createElement("input");
      input.type = "search";
      input.placeholder = "Search";
      input.style.cssText = "width:180px;font:inherit;background:#1e1e1e;color:#ddd;border:1px solid #555;padding:2px 4px";
      const count = document.createElement("span");
      count.style.cssText = "min-width:44px;text-align:center";
      const button = (label, title, action) => {
        const element = document.createElement("button");
        element.type = "button";
        element.textContent = label;
        element.title = title;
        element.style.cssText = "font:inherit;background:none;color:inherit;border:none;cursor:pointer;padding:0 4px";
        element.addEventListener("click", action);
        return element;
      };
      const next = () => this.searchAddon.findNext(input.value, this.searchOptions({ incremental: false }));
      const previous = () => this.searchAddon.findPrevious(input.value, this.searchOptions());
      input.addEventListener("input", () => this.searchAddon.findNext(input.value, this.searchOptions({ incremental: true })));
      input.addEventListener("keydown", (event) => {
        event.stopPropagation();
        if (event.key === "Enter") (event.shiftKey ? previous : next)();
        else if (event.key === "Escape") this.closeSearch();
      });
      box.append(input, count, button("↑", "Previous (Shift+Enter)", previous), button("↓", "Next (Enter)", next),
        button("×", "Close (Escape)", () => this.closeSearch()));
      this.listen(this.searchAddon.onDidChangeResults(({ resultIndex, resultCount }) => {
        count.textContent = resultCount ? `${resultIndex + 1}/${resultCount}` : input.value ? "0/0" : "";
      }));
      this.searchBox = { box, input };
    }
    const { box, input } = this.searchBox;
    if (!box.isConnected) (this.term.element || document.body).append(box);
    if (text !== undefined) input.value = text;
    input.focus();
    input.select();
    return input;
  }

  closeSearch() {
    if (!this.searchBox) return;
    this.searchBox.box.remove();
    this.searchAddon.clearDecorations();
    this.term.focus();
  }

  // --- The API -------------------------------------------------------------

  api() {
    const link = this;
    const search = this.searchAddon ? {
      /** Opens the search box (Ctrl+Shift+F), with `text` in it if given. */
      open: (text) => { link.openSearch(text); },
      close: () => link.closeSearch(),
      /** Selects the next match of `text`; whether there was one. */
      next: (text, options) => link.searchAddon.findNext(text, link.searchOptions(options)),
      previous: (text, options) => link.searchAddon.findPrevious(text, link.searchOptions(options)),
      clear: () => link.searchAddon.clearDecorations(),
    } : null;
    return {
      /** Which features are on: {image, links, search, unicode11, clipboard, title, trzsz, zmodem}. */
      features: { ...this.features },
      search,
      /** The transfer in flight: {protocol, direction, name, bytes, total}, or null. */
      get transfer() {
        return link.transfer ? { ...link.transfer } : null;
      },
      uploadFiles: (files) => link.uploadFiles(files),
      abortTransfer: (reason) => link.abortTransfer(reason),
      dispose: () => link.dispose(),
    };
  }

  dispose() {
    this.abortTransfer("the terminal was closed");
    clearInterval(this.trzszWatch);
    clearTimeout(this.heldTimer);
    for (const disposable of this.disposables.splice(0)) disposable.dispose();
    for (const addon of this.addons.splice(0)) addon.dispose();
    if (this.searchBox) this.searchBox.box.remove();
    this.session.onOutput = this.pageOnOutput;
    this.session.onState = this.pageOnState;
    this.trzsz = null;
    this.Zmodem = null;
  }
}

/** zmodem.js as loaded, with what lrzsz needs of it (and made faster
 * where it matters, see below). */
function patchZmodem(Zmodem) {
  // Debian's sz (lrzsz 0.12.21rc) often leaves without the "OO" that should
  // follow the closing ZFIN (ttyd#239), and zmodem.js then takes the shell's
  // prompt for a protocol error. After ZFIN, whatever is not "OO" is the
  // terminal's again: the session ends and hands it back.
  const receive = Zmodem.Session.Receive.prototype;
  const consumeFirst = receive._consume_first;
  receive._consume_first = function () {
    const buffer = this._input_buffer;
    if (this._got_ZFIN && buffer.length && !(buffer[0] === 79 && (buffer.length === 1 || buffer[1] === 79))) {
      this._bytes_after_OO = buffer.splice(0);
      this._on_session_end();
      return;
    }
    return consumeFirst.call(this);
  };

  // Speed. zmodem.js keeps its bytes in arrays of numbers and splices them,
  // which moves a few MB/s at best. Data subpackets, nearly all the bytes of
  // a transfer, get typed-array paths instead, byte for byte what
  // zmodem.js's own code reads and writes; the rest (headers, offers, the
  // odd case) stays zmodem.js's.
  const { Sentry, Subpacket } = Zmodem;
  const sentryConsume = Sentry.prototype.consume;
  Sentry.prototype.consume = function (input) {
    const session = this._zsession;
    if (!session || session.type !== "receive" || !(input instanceof Uint8Array)) return sentryConsume.call(this, input);
    session.consume(input);
    if (!session.has_ended()) return;
    // Ended (the Sentry has let go of it): the rest is the terminal's,
    // or another session.
    return sentryConsume.call(this, session.get_trailing_bytes());
  };

  const receiveConsume = receive.consume;
  receive.consume = function (octets) {
    if (!(octets instanceof Uint8Array)) return receiveConsume.call(this, octets);
    let bytes = octets;
    while (bytes.length && !this._aborted && this._last_header_crc === 32 &&
      this._next_subpacket_handler === this._consume_ZDATA_data && !this._input_buffer.length) {
      bytes = receiveSubpackets(this, bytes, Subpacket);
    }
    if (bytes.length) return receiveConsume.call(this, Array.from(bytes));
  };

  const send = Zmodem.Session.Send.prototype;
  const sendFilePart = send._send_file_part;
  send._send_file_part = function (bytes, packetEnd) {
    if (!(bytes instanceof Uint8Array) || this._subpacket_encode_func !== "encode16") {
      return sendFilePart.call(this, bytes, packetEnd);
    }
    if (!this._sent_ZDATA) {
      this._send_header("ZDATA", this._file_offset);
      this._sent_ZDATA = true;
    }
    let offset = 0;
    do {
      const size = Math.min(ZMODEM_CHUNK, bytes.length - offset);
      const last = offset + size >= bytes.length;
      const frameEnd = FRAME_ENDS[last ? packetEnd : "no_end_no_ack"];
      const chunk = bytes.subarray(offset, offset + size);
      const crc = crc16(Uint8Array.of(frameEnd), crc16(chunk));
      const out = new Uint8Array(2 * size + 8);
      let n = zdleEncode(this._zencoder, chunk, out, 0);
      out[n++] = ZDLE;
      out[n++] = frameEnd;
      n = zdleEncode(this._zencoder, Uint8Array.of(crc >> 8, crc & 0xff), out, n);
      this._sender(out.subarray(0, n));
      this._file_offset += size;
      offset += size;
    } while (offset < bytes.length);
  };
  return Zmodem;
}

const ZDLE = 0x18;
const ZMODEM_CHUNK = 8192; // zmodem.js's subpacket size (lrzsz takes up to 8 KiB)
// ZCRCE, ZCRCG, ZCRCQ, ZCRCW by zmodem.js's names.
const FRAME_ENDS = { end_no_ack: 0x68, no_end_no_ack: 0x69, no_end_ack: 0x6a, end_ack: 0x6b };
const FRAME_END_NAMES = { 0x68: "end_no_ack", 0x69: "no_end_no_ack", 0x6a: "no_end_ack", 0x6b: "end_ack" };

const CRC32_TABLE = new Int32Array(256);
const CRC16_TABLE = new Uint16Array(256);
for (let n = 0; n < 256; n++) {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  CRC32_TABLE[n] = c;
  let d = n << 8;
  for (let k = 0; k < 8; k++) d = d & 0x8000 ? (d << 1) ^ 0x1021 : d << 1;
  CRC16_TABLE[n] = d & 0xffff;
}

/** CRC-32 (ZMODEM's, as crc-32's buf) of `bytes` after `crc` (unsigned). */
function crc32(bytes, crc = 0) {
  let c = ~crc;
  for (let i = 0; i < bytes.length; i++) c = CRC32_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}

/** CRC-16/XMODEM (ZMODEM's) of `bytes` after `crc`. */
function crc16(bytes, crc = 0) {
  for (let i = 0; i < bytes.length; i++) crc = ((crc << 8) ^ CRC16_TABLE[((crc >> 8) ^ bytes[i]) & 0xff]) & 0xffff;
  return crc;
}

/** zmodem.js's ZDLE.encode into `out` from `n` on (the same bytes, the
 * same state carried in the encoder); returns the new end. */
function zdleEncode(encoder, input, out, n) {
  const table = encoder._zdle_table;
  const escapeControl = encoder._config.escape_ctrl_chars;
  let last = encoder._lastcode;
  for (let i = 0; i < input.length; i++) {
    const todo = table[input[i]];
    last = input[i];
    if (todo !== 1 && (escapeControl || todo === 2 || (last & 0x7f) === 0x40)) {
      out[n++] = ZDLE;
      last ^= 0x40;
    }
    out[n++] = last;
  }
  encoder._lastcode = last;
  return n;
}

const scratch = { buffer: new Uint8Array(1 << 16) };

/**
 * Reads ZDATA subpackets (32-bit CRC) of a receiving zmodem.js session from
 * `bytes`, each handed to the session as zmodem.js's parser would; stops
 * after a frame end, or at anything unusual (which zmodem.js's own code
 * then reads). A subpacket cut by the end of `bytes` waits in the session
 * for the next ones. Returns the bytes it did not read.
 */
function receiveSubpackets(session, bytes, Subpacket) {
  let data = bytes;
  if (session._fastPending) {
    data = concatBytes([session._fastPending, bytes]);
    session._fastPending = null;
  }
  let at = 0;
  while (at < data.length && session._next_subpacket_handler === session._consume_ZDATA_data) {
    if (scratch.buffer.length < data.length - at) scratch.buffer = new Uint8Array(data.length - at);
    const out = scratch.buffer;
    let n = 0;
    let i = at;
    let frameEnd = -1;
    let odd = false;
    const crc = [];
    // The payload, ZDLE-decoded, up to ZDLE and a frame end; then 4 CRC bytes.
    while (i < data.length) {
      let c = data[i++];
      if (c === 0x11 || c === 0x13 || c === 0x91 || c === 0x93) continue; // XON/XOFF: ignored
      if (c === ZDLE) {
        if (i === data.length) {
          i = -1;
          break;
        }
        const escaped = data[i++];
        if (frameEnd === -1 && escaped >= 0x68 && escaped <= 0x6b) {
          frameEnd = escaped;
          continue;
        }
        if (escaped === 0x6c) c = 0x7f; // ZRUB0
        else if (escaped === 0x6d) c = 0xff; // ZRUB1
        else if ((escaped & 0x60) === 0x40) c = escaped ^ 0x40;
        else {
          odd = true; // a cancel (CAN CAN…) or garbage: zmodem.js's to read
          break;
        }
      }
      if (frameEnd === -1) out[n++] = c;
      else {
        crc.push(c);
        if (crc.length === 4) break;
      }
    }
    if (odd) return data.subarray(at);
    if (i === -1 || crc.length < 4) {
      session._fastPending = data.slice(at); // the rest comes later
      return data.subarray(data.length);
    }
    const payload = out.slice(0, n);
    const expected = crc32(Uint8Array.of(frameEnd), crc32(payload));
    const got = crc[0] | (crc[1] << 8) | (crc[2] << 16) | (crc[3] << 24);
    if (got >>> 0 !== expected) throw new Error("ZMODEM CRC mismatch");
    const subpacket = Subpacket.build(payload, FRAME_END_NAMES[frameEnd]);
    session._consume_data(subpacket);
    if (subpacket.frame_end()) session._next_subpacket_handler = null;
    at = i;
  }
  return data.subarray(at);
}
