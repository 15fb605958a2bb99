// Drives client-test.html in headless Chromium: ws-subprocess.js against the
// real server. Usage:
//   node client-test.mjs PAGE_URL WS_URL DROPPING_WS_URL CUT_URL
// WS_URL is the server's endpoint; DROPPING_WS_URL reaches it through a TCP
// relay whose connections are all cut, abruptly, by a GET of CUT_URL.
// Prints a JSON summary of what each session did (the test asserts on it);
// exits non-zero on any failure.
import { launchChromium } from "./chromium.mjs";

const [pageUrl, wsUrl, droppingUrl, cutUrl] = process.argv.slice(2);
const browser = await launchChromium();
const results = {};
let failed = null;
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(20000);
  page.on("pageerror", (err) => { failed = failed || `page error: ${err}`; });
  await page.goto(pageUrl);
  await page.waitForFunction(() => document.body.dataset.ready === "yes");

  const record = (name) => page.evaluate((name) => window.clientTest.record(name), name);
  const sockets = () => page.evaluate(() => window.clientTest.sockets);
  const open = (name, options) => page.evaluate(([name, options]) => window.clientTest.open(name, options), [name, options]);
  const write = (name, text) => page.evaluate(([name, text]) => window.clientTest.write(name, text), [name, text]);
  const call = (name, method, ...args) =>
    page.evaluate(([name, method, args]) => window.clientTest[method](name, ...args), [name, method, args]);
  // Waits until `check(record)` holds for the session `name`.
  const until = async (name, what, check, timeout = 20000) => {
    const deadline = Date.now() + timeout;
    for (;;) {
      const r = await record(name);
      if (check(r)) return r;
      if (r.error) throw new Error(`${name}: ${r.error}`);
      const over = r.states.find((s) => s.state === "closed" || s.state === "failed");
      if (over) throw new Error(`${name}: ${over.state} before any ${what}: ${JSON.stringify(r).slice(0, 4000)}`);
      if (Date.now() > deadline) throw new Error(`${name}: no ${what} in ${timeout} ms: ${JSON.stringify(r).slice(0, 4000)}`);
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
  };
  const hasState = (state) => (r) => r.states.some((s) => s.state === state);
  const lines = (text) => (text.match(/\n/g) || []).length;
  const cut = async () => (await fetch(cutUrl)).text();

  // 1. Echo: `cat` on pipes, the token as the bearer subprotocol.
  await open("echo", { url: wsUrl, kinds: ["cat"] });
  await until("echo", "open", hasState("open"));
  await write("echo", "hello from ws-subprocess.js\n");
  let r = await until("echo", "echo", (r) => r.output.includes("hello from ws-subprocess.js\n"));
  const echoSocket = (await sockets()).at(-1);
  await call("echo", "close");
  r = await until("echo", "exit", (r) => r.exit !== null);
  results.echo = { output: r.output, tokens: r.tokens, socket: echoSocket, exit: r.exit };

  // 2. A terminal: the size given before the connection is opened, then a
  // resize while it is.
  await open("tty", { url: wsUrl, kinds: ["tty"], size: { cols: 100, rows: 30 } });
  await until("tty", "open", hasState("open"));
  await write("tty", "stty size\n");
  const sizes = (r) => [...r.output.matchAll(/^(\d+ \d+)\r?$/gm)].map((m) => m[1]);
  await until("tty", "first size", (r) => sizes(r).length >= 1);
  await call("tty", "resize", 120, 40);
  await write("tty", "stty size\n");
  await until("tty", "second size", (r) => sizes(r).length >= 2);
  await write("tty", "exit 7\n");
  r = await until("tty", "exit", (r) => r.exit !== null);
  results.tty = { sizes: sizes(r), exit: r.exit };

  // 3. The exit status.
  await open("exit", { url: wsUrl, kinds: ["exit3"] });
  r = await until("exit", "exit", (r) => r.exit !== null);
  results.exit = { output: r.output, exit: r.exit };

  // 4. A dropped connection: a named session printing numbered lines; the
  // relay cuts the connection while output flows; the module reattaches with
  // `since` by itself and the session's output arrives whole.
  const id = "drop-" + Math.random().toString(36).slice(2, 10);
  const before = (await sockets()).length;
  await open("drop", { url: droppingUrl, kinds: ["start", "attach"], session: id });
  await until("drop", "150 lines", (r) => lines(r.output) >= 150);
  const cutReply = await cut();
  r = await until("drop", "exit", (r) => r.exit !== null, 90000);
  results.drop = {
    id,
    cut: cutReply,
    output: r.output,
    exit: r.exit,
    tokens: r.tokens,
    info: r.info,
    states: r.states,
    sockets: (await sockets()).slice(before),
    chunks: r.chunks.map((c) => ({ at: c.at, lines: lines(c.text), bytes: new TextEncoder().encode(c.text).length })),
  };

  // 5. An observer sees the writer's output; its own input goes nowhere.
  const shared = "share-" + Math.random().toString(36).slice(2, 10);
  await open("writer", { url: wsUrl, kinds: ["share", "attach"], session: shared });
  await until("writer", "attached", hasState("attached"));
  await open("observer", { url: wsUrl, kinds: ["observe"], session: shared });
  await until("observer", "attached", hasState("attached"));
  await write("observer", "from-observer\n");
  await write("writer", "from-writer-1\n");
  await until("observer", "first line", (r) => r.output.includes("got from-writer-1\n"));
  await new Promise((resolve) => setTimeout(resolve, 500));
  await write("writer", "from-writer-2\nbye\n");
  const observed = await until("observer", "exit", (r) => r.exit !== null);
  const wrote = await until("writer", "exit", (r) => r.exit !== null);
  results.observer = { role: observed.info[0]?.role, output: observed.output, exit: observed.exit, tokens: observed.tokens };
  results.writer = { role: wrote.info[0]?.role, output: wrote.output, exit: wrote.exit };

  // 6. Leaving while a reattach is pending: no connection is opened after.
  const left = "leave-" + Math.random().toString(36).slice(2, 10);
  const leaveBefore = (await sockets()).length;
  await open("leave", { url: droppingUrl, kinds: ["start", "attach"], session: left });
  await until("leave", "output", (r) => lines(r.output) >= 5);
  const leaveCut = await cut();
  await until("leave", "reattaching", hasState("reattaching"));
  await call("leave", "close");
  await new Promise((resolve) => setTimeout(resolve, 2000));
  r = await record("leave");
  results.leave = { cut: leaveCut, states: r.states.map((s) => s.state), exit: r.exit, sockets: (await sockets()).length - leaveBefore };
} catch (err) {
  failed = String(err && err.stack || err);
} finally {
  await browser.close();
}
if (failed) results.error = failed;
console.log(JSON.stringify(results));
process.exit(failed ? 1 : 0);
