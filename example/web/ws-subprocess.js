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
   */
  constructor({ url, token, session = null, reattach = true, onOutput, onExit, onState }) {
    Object.assign(this, { url, token, session, reattach });
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
    const message = new Uint8Array(bytes.length + 1);
    message[0] = channel;
    message.set(bytes, 1);
    this.socket.send(message);
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
