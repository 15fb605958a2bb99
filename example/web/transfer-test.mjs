// Drives the demo page in headless Chromium for tests/browser_files.rs: files
// both ways with ZMODEM (lrzsz's sz/rz) and trzsz (tsz/trz), drag and drop,
// pictures (Sixel, iTerm2), the title, links, search, OSC 52 with and
// without the page's opt-in, Unicode 11 widths; or (mode "observer") what
// a second tab watching the session gets while the writer moves files.
// Usage: node transfer-test.mjs '<JSON config>' (see tests/browser_files.rs).
// Prints a JSON summary; exits non-zero when the page itself fails.
import { createHash } from "node:crypto";
import { readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { launchChromium } from "./chromium.mjs";

const config = JSON.parse(process.argv[2]);
const sha256 = (path) => createHash("sha256").update(readFileSync(path)).digest("hex");
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const MB = 1e6;
let downloads = 0; // numbers the saved downloads

const browser = await launchChromium();
const results = { errors: [] };
try {
  // The clipboard may be read and written (OSC 52, without a user gesture).
  const permissions = ["clipboard-read", "clipboard-write"];
  const context = await browser.newContext({ viewport: { width: 1000, height: 600 }, acceptDownloads: true, permissions });
  const page = await context.newPage();
  page.setDefaultTimeout(30000);
  page.on("pageerror", (err) => results.errors.push(`page error: ${err}`));
  const console_ = [];
  page.on("console", (message) => console_.push(message.text()));
  await page.goto(config.url);
  await running(page);
  results.features = await page.evaluate(() => window.demo.terminal.features);
  await page.click("#terminal");

  try {
    if (config.mode === "observer") await observe(page, context);
    else await write(page);
  } catch (err) {
    results.failed = String(err.stack || err);
    results.screen = await screen(page).catch(() => null);
    results.transfersSeen = await page.evaluate(() => window.demo.transfers).catch(() => null);
    process.exitCode = 1;
  }
  results.console = console_;
} finally {
  await browser.close();
}
console.log(JSON.stringify(results));

async function running(page) {
  await page.waitForFunction(() => document.getElementById("status").dataset.state === "running");
}

/** The terminal's text, line by line. */
function screen(page) {
  return page.evaluate(() => {
    const buffer = window.demo.term.buffer.active;
    const lines = [];
    for (let i = 0; i < buffer.length; i++) lines.push(buffer.getLine(i).translateToString(true));
    return lines.join("\n");
  });
}

/** Waits until the screen has a line equal to `line`. */
async function waitForLine(page, line, timeout = 30000) {
  const deadline = Date.now() + timeout;
  while (Date.now() < deadline) {
    if ((await screen(page)).split("\n").includes(line)) return;
    await sleep(50);
  }
  throw new Error(`never saw the line ${JSON.stringify(line)}:\n${await screen(page)}`);
}

/**
 * How many pixels of each of `colours` ([r, g, b], 12 either way per
 * channel) the screenshot `shot` (PNG bytes) has, counted in `page`.
 */
function countColours(page, shot, colours) {
  return page.evaluate(async ([png, colours]) => {
    const image = new Image();
    image.src = "data:image/png;base64," + png;
    await image.decode();
    const canvas = document.createElement("canvas");
    canvas.width = image.width;
    canvas.height = image.height;
    const context = canvas.getContext("2d");
    context.drawImage(image, 0, 0);
    const { data } = context.getImageData(0, 0, image.width, image.height);
    return colours.map((colour) => {
      let pixels = 0;
      for (let i = 0; i < data.length; i += 4) {
        if (Math.abs(data[i] - colour[0]) <= 12 && Math.abs(data[i + 1] - colour[1]) <= 12 && Math.abs(data[i + 2] - colour[2]) <= 12) pixels++;
      }
      return pixels;
    });
  }, [shot.toString("base64"), colours]);
}

/**
 * Counts the shell's prompts: the test's .bashrc puts an OSC 7777 (which
 * terminals ignore) in PS1, so a command is over when the next one comes.
 */
async function countPrompts(page) {
  await page.evaluate(() => {
    window.prompts = 0;
    window.demo.term.parser.registerOscHandler(7777, () => {
      window.prompts++;
      return true;
    });
  });
}

/**
 * Types `command` and Enter. Returns when Enter went (node's performance
 * clock) and `done()`, which waits for the prompt after the command.
 */
async function run(page, command, timeout = 60000) {
  await page.keyboard.type(command);
  const before = await page.evaluate(() => window.prompts);
  const started = performance.now();
  await page.keyboard.press("Enter");
  const done = () => page.waitForFunction((before) => window.prompts > before, before, { timeout });
  return { started, done };
}

/** Runs `command` to its end. */
async function runToEnd(page, command) {
  await (await run(page, command)).done();
}

async function download(page, command, source) {
  const event = page.waitForEvent("download", { timeout: 60000 });
  const { started, done } = await run(page, command);
  const saved = await event;
  const seconds = (performance.now() - started) / 1000;
  const path = join(config.out, `${++downloads}-${saved.suggestedFilename()}`);
  await saved.saveAs(path);
  await done();
  const bytes = statSync(path).size;
  return { name: saved.suggestedFilename(), bytes, seconds, mbps: bytes / MB / seconds, sha256: sha256(path), expected: sha256(source) };
}

async function upload(page, command, source, target) {
  const chooser = page.waitForEvent("filechooser", { timeout: 60000 });
  const { started, done } = await run(page, command);
  await (await chooser).setFiles(source);
  const size = statSync(source).size;
  // Complete: the file the session writes has every byte.
  for (;;) {
    let written = -1;
    try {
      written = statSync(target).size;
    } catch {
      // not there yet
    }
    if (written === size) break;
    if (performance.now() - started > 60000) throw new Error(`${target}: ${written} of ${size} bytes after a minute`);
    await sleep(5);
  }
  const seconds = (performance.now() - started) / 1000;
  await done();
  return { bytes: size, seconds, mbps: size / MB / seconds, sha256: sha256(target), expected: sha256(source) };
}

async function write(page) {
  const { home, local } = config;
  await countPrompts(page);
  await runToEnd(page, "clear");

  // ZMODEM and trzsz, 10 MB of random bytes each way. trzsz in its binary
  // mode (-b), made for binary files (its default, base64, moves a third
  // more bytes).
  results.sz = await download(page, "sz big.bin", join(home, "big.bin"));
  results.tsz = await download(page, "tsz -b big.bin", join(home, "big.bin"));
  results.rz = await upload(page, "rz", join(local, "zmodem-up.bin"), join(home, "zmodem-up.bin"));
  results.trz = await upload(page, "trz -b", join(local, "trzsz-up.bin"), join(home, "trzsz-up.bin"));
  results.transfers = await page.evaluate(() => window.demo.transfers.filter((event) => event.state !== "progress"));
  await page.screenshot({ path: join(config.shots, "transfer.png") });

  // Drag and drop: a file dropped on the terminal goes up with trz.
  await runToEnd(page, "clear");
  const dropDone = page.evaluate((before) => new Promise((resolve) => {
    const check = setInterval(() => {
      if (window.prompts > before) resolve(clearInterval(check));
    }, 20);
  }), await page.evaluate(() => window.prompts));
  const dropped = await page.evaluate(async () => {
    const bytes = new Uint8Array(1 << 20);
    for (let at = 0; at < bytes.length; at += 65536) crypto.getRandomValues(bytes.subarray(at, at + 65536));
    const transfer = new DataTransfer();
    transfer.items.add(new File([bytes], "dropped.bin"));
    const drop = new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true });
    window.demo.term.element.dispatchEvent(drop);
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
    return { expected: [...digest].map((b) => b.toString(16).padStart(2, "0")).join(""), handled: drop.defaultPrevented };
  });
  const droppedPath = join(home, "dropped.bin");
  for (let tries = 0; tries < 600; tries++) {
    try {
      if (statSync(droppedPath).size === 1 << 20) break;
    } catch {
      // not yet
    }
    await sleep(50);
  }
  await dropDone;
  await waitForLine(page, "- dropped.bin");
  results.dropped = { ...dropped, sha256: sha256(droppedPath) };

  // Pictures: a Sixel one drawn by img2sixel and a PNG sent with the
  // iTerm2 protocol (OSC 1337 File=inline=1), each in its own colour, both
  // on the screen. (The cursor ends on a picture's last row: echo moves
  // below it.)
  await runToEnd(page, "clear");
  await runToEnd(page, "img2sixel picture.ppm; echo");
  await runToEnd(page, "printf '\\e]1337;File=inline=1;size=%d:%s\\a' $(stat -c%s picture.png) $(base64 -w0 picture.png); echo");
  // Drawn once both colours show (the PNG is decoded a moment later).
  let counts = [0, 0];
  for (const deadline = Date.now() + 5000; Date.now() < deadline;) {
    await sleep(300);
    const shot = await page.screenshot({ path: join(config.shots, "images.png") });
    counts = await countColours(page, shot, [config.colour, config.itermColour]);
    if (counts.every((n) => n > 10000)) break;
  }
  results.sixel = { pixels: counts[0] };
  results.iterm = { pixels: counts[1] };

  // The title, from OSC 0.
  await runToEnd(page, "clear; printf '\\033]0;%s\\007' \"ws-subprocess title $((6*7))\"");
  await page.waitForFunction(() => document.title === "ws-subprocess title 42");
  results.title = await page.title();

  // A link: hovered it is one, clicked it opens.
  const url = new URL("/linked-from-the-terminal", config.url).href;
  await runToEnd(page, `echo ${url}`);
  const cell = await page.evaluate((url) => {
    const term = window.demo.term;
    const buffer = term.buffer.active;
    let row = -1;
    for (let i = 0; i < buffer.length; i++) if (buffer.getLine(i).translateToString(true) === url) row = i;
    const box = term.element.querySelector(".xterm-screen").getBoundingClientRect();
    const width = box.width / term.cols, height = box.height / term.rows;
    return { x: box.left + width * 5.5, y: box.top + height * (row - buffer.viewportY + 0.5) };
  }, url);
  await page.mouse.move(cell.x, cell.y);
  await page.waitForFunction(() => !!document.querySelector(".xterm-screen.xterm-cursor-pointer, .xterm-cursor-pointer"), null, { timeout: 5000 })
    .catch(() => {});
  const pointer = await page.evaluate(() => !!document.querySelector(".xterm-cursor-pointer"));
  await page.screenshot({ path: join(config.shots, "links.png") });
  const popup = page.waitForEvent("popup", { timeout: 10000 });
  await page.mouse.click(cell.x, cell.y);
  const opened = await popup;
  await opened.waitForURL(url, { timeout: 10000 }).catch(() => {});
  results.link = { pointer, opened: opened.url() };
  await opened.close();

  // Search: Ctrl+Shift+F, a word, Enter: it is selected.
  await page.click("#terminal");
  await runToEnd(page, "clear; for i in 1 2 3; do echo \"line $i: needle-$((6*7))\"; done");
  await page.keyboard.press("Control+Shift+F");
  await page.waitForSelector(".ws-subprocess-search input");
  await page.keyboard.type("needle-42");
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => window.demo.term.getSelection() === "needle-42");
  await sleep(200);
  await page.screenshot({ path: join(config.shots, "search.png") });
  results.search = {
    selection: await page.evaluate(() => window.demo.term.getSelection()),
    api: await page.evaluate(() => window.demo.terminal.search.next("line 2")),
  };
  await page.keyboard.press("Escape");
  await page.click("#terminal");

  // OSC 52 reaches the clipboard only where the page opts in: here (no
  // ?clipboard=1) the clipboard keeps what it had; in a tab with
  // ?clipboard=1 (a session of its own) the same printf puts copied-42 there.
  const osc52 = "printf '\\033]52;c;%s\\007' \"$(printf 'copied-42' | base64)\"";
  const clipboard = (tab) => tab.evaluate(() => navigator.clipboard.readText());
  await page.evaluate(() => navigator.clipboard.writeText("before-52"));
  await runToEnd(page, `clear; ${osc52}`);
  await sleep(500);
  results.clipboard = { before: await clipboard(page) };
  const opted = await page.context().newPage();
  opted.setDefaultTimeout(30000);
  opted.on("pageerror", (err) => results.errors.push(`clipboard page error: ${err}`));
  await opted.goto(new URL("/?clipboard=1", config.url).href);
  await running(opted);
  results.clipboard.features = await opted.evaluate(() => window.demo.terminal.features);
  await countPrompts(opted);
  await opted.click("#terminal");
  // There too, before the same printf, a title and a file with wide
  // characters (👍👍 漢字, two columns each with Unicode 11) over a line of
  // ASCII: docs/terminal.png shows the title and the notice that the
  // clipboard was written in the status line, and the two #s one above the
  // other.
  await runToEnd(opted, "clear");
  await runToEnd(opted, "printf '\\033]0;%s\\007' \"vim notes-$((6*7)).txt\"");
  await runToEnd(opted, "cat widths.txt");
  await runToEnd(opted, osc52);
  for (const deadline = Date.now() + 5000; Date.now() < deadline && (await clipboard(opted)) !== "copied-42";) await sleep(50);
  results.clipboard.after = await clipboard(opted);
  await opted.waitForFunction(() => document.getElementById("copied").textContent !== "", null, { timeout: 5000 }).catch(() => {});
  await sleep(200);
  // The status line as the screenshot shows it: read before and after (the
  // notice goes after a few seconds).
  const bar = () => opted.evaluate(() => [...document.querySelectorAll("#bar > span")].map((span) => span.textContent).join(" "));
  const barBefore = await bar();
  await opted.screenshot({ path: join(config.shots, "terminal.png") });
  results.terminal = {
    bar: [barBefore, await bar()],
    title: await opted.title(),
    markers: await opted.evaluate(() => {
      const term = window.demo.term;
      const buffer = term.buffer.active;
      const markers = [];
      for (let y = 0; y < buffer.length; y++) {
        const line = buffer.getLine(y);
        if (!line.translateToString(true).startsWith("w11: ")) continue;
        for (let x = 0; x < term.cols; x++) if (line.getCell(x).getChars() === "#") markers.push(x);
      }
      return markers;
    }),
  };
  await opted.keyboard.type("exit 0\n");
  await opted.waitForFunction(() => document.getElementById("status").textContent.startsWith("exited"));
  await opted.close();
  await page.bringToFront();
  await page.click("#terminal");

  // Unicode 11 widths: 👍 (U+1F44D) is one column wide in Unicode 6 (what
  // xterm.js has without the addon) and two in 11, so the # after it is in
  // column 6 here and in column 5 on the bare page below.
  const widths = (tab) => tab.evaluate(() => {
    const term = window.demo.term;
    const buffer = term.buffer.active;
    for (let y = buffer.length - 1; y >= 0; y--) {
      const line = buffer.getLine(y);
      if (!line.translateToString(true).startsWith("w11:")) continue;
      let marker = -1;
      for (let x = 0; x < term.cols; x++) if (line.getCell(x).getChars() === "#") marker = x;
      return { version: term.unicode.activeVersion, emoji: line.getCell(4).getWidth(), marker };
    }
    return { version: term.unicode.activeVersion, emoji: null, marker: null };
  });

  // Without the optional packages (none served): each feature is off, with
  // a line on the console, and the terminal works as before.
  const bare = await page.context().newPage();
  const lines = [];
  bare.on("console", (message) => lines.push(message.text()));
  bare.on("pageerror", (err) => results.errors.push(`bare page error: ${err}`));
  await bare.route("**/assets/modules/**", (route) => route.fulfill({ status: 404, body: "not here" }));
  await bare.goto(new URL("/?watch=" + encodeURIComponent(await page.evaluate(() => window.demo.id)), config.url).href);
  await running(bare);
  // (The line with 👍 comes live to both pages: no repaint of the server's.)
  await runToEnd(page, "echo bare-$((6*7)); printf 'w11:\\360\\237\\221\\215#\\n'");
  await waitForLine(bare, "bare-42");
  await waitForLine(page, "w11:\u{1F44D}#");
  await waitForLine(bare, "w11:\u{1F44D}#");
  results.widths = { page: await widths(page), bare: await widths(bare) };
  results.bare = { features: await bare.evaluate(() => window.demo.terminal.features), off: lines.filter((line) => line.includes(" is off ")) };
  await bare.close();

  await page.keyboard.type("exit 0\n");
  await page.waitForFunction(() => document.getElementById("status").textContent.startsWith("exited"));
}

/**
 * A reattach with `since` from the session's first byte, after a finished
 * download and upload: the server replays the output with notes where the
 * transfers were, and the page, a writer with all its transfer machinery,
 * starts none.
 */
async function replay(page) {
  await runToEnd(page, "sz tiny.bin");
  const before = await page.evaluate(() => window.demo.transfers.length);
  const started = { downloads: 0, choosers: 0 };
  const onDownload = () => started.downloads++;
  const onChooser = () => started.choosers++;
  page.on("download", onDownload);
  page.on("filechooser", onChooser);
  const info = await page.evaluate(() => new Promise((resolve) => {
    const session = window.demo.session;
    const onState = session.onState;
    session.onState = (state, detail) => {
      onState(state, detail);
      if (state === "attached") {
        session.onState = onState;
        resolve(detail);
      }
    };
    // As if the page had taken nothing yet: the reattach asks since=0.
    session.offset = 0;
    session.received = 0;
    session.repaintLeft = 0;
    session.socket.close(3000, "test: reattach from the start");
  }));
  await runToEnd(page, "echo replayed-$((6*7))");
  page.off("download", onDownload);
  page.off("filechooser", onChooser);
  const sockets = await page.evaluate(() => window.demo.session.socket.url);
  return {
    info,
    url: sockets,
    started,
    transfers: await page.evaluate((before) => window.demo.transfers.slice(before), before),
    screen: await screen(page),
  };
}

/**
 * A reattach in the middle of a download: the page aborts it (the replay
 * has a note where its bytes were), says so, and sz ends.
 */
async function reattach(page) {
  await runToEnd(page, "clear");
  await page.evaluate(() => {
    // The connection drops (a close code that is no normal end) as soon
    // as the download has begun.
    const transfers = window.demo.transfers;
    transfers.push = function (event) {
      if (event.protocol === "zmodem" && event.state === "progress" && event.bytes > 0 && !transfers.cut) {
        transfers.cut = true;
        window.demo.session.socket.close(3000, "test: a dropped connection");
      }
      return Array.prototype.push.call(this, event);
    };
  });
  const cut = await run(page, "sz big.bin", 30000);
  await page.waitForFunction(() => window.demo.transfers.some((event) => event.state === "aborted"));
  const promptBack = await cut.done().then(() => true, () => false);
  return {
    aborted: await page.evaluate(() => window.demo.transfers.filter((event) => event.state === "aborted")),
    promptBack,
    screen: await screen(page),
  };
}

async function observe(page, context) {
  const { home, local } = config;
  await countPrompts(page);
  const id = await page.evaluate(() => window.demo.id);
  const watcher = await context.newPage();
  watcher.setDefaultTimeout(30000);
  watcher.on("pageerror", (err) => results.errors.push(`watcher page error: ${err}`));
  // What the watching tab receives, as it comes off the socket.
  await watcher.addInitScript(() => {
    const seen = { output: [], infos: [] };
    window.received = seen;
    const Native = window.WebSocket;
    window.WebSocket = class extends Native {
      constructor(...args) {
        super(...args);
        this.addEventListener("message", (event) => {
          const bytes = new Uint8Array(event.data);
          if (bytes[0] === 1 || bytes[0] === 2) seen.output.push(bytes.slice(1));
          else if (bytes[0] === 5) seen.infos.push(JSON.parse(new TextDecoder().decode(bytes.subarray(1))));
        });
      }
    };
  });
  const started = { downloads: 0, choosers: 0 };
  watcher.on("download", () => started.downloads++);
  watcher.on("filechooser", () => started.choosers++);
  await watcher.goto(new URL("/?watch=" + encodeURIComponent(id), config.url).href);
  await running(watcher);
  results.watcherFeatures = await watcher.evaluate(() => window.demo.terminal.features);

  // The writer moves files both ways with both protocols.
  await page.bringToFront();
  await page.click("#terminal");
  const moved = {};
  moved.sz = await download(page, "sz small.bin", join(home, "small.bin"));
  moved.tsz = await download(page, "tsz -b small.bin", join(home, "small.bin"));
  moved.rz = await upload(page, "rz", join(local, "zmodem-small.bin"), join(home, "zmodem-small.bin"));
  moved.trz = await upload(page, "trz -b", join(local, "trzsz-small.bin"), join(home, "trzsz-small.bin"));
  results.moved = moved;
  await runToEnd(page, "echo finished-$((6*7))");
  await waitForLine(watcher, "finished-42").catch((err) => results.errors.push(`watcher: ${err.message}`));

  results.watcher = await watcher.evaluate(() => {
    const { output, infos } = window.received;
    const all = new Uint8Array(output.reduce((n, part) => n + part.length, 0));
    let at = 0;
    for (const part of output) {
      all.set(part, at);
      at += part.length;
    }
    const has = (text) => {
      const needle = new TextEncoder().encode(text);
      outer: for (let i = all.indexOf(needle[0]); i !== -1; i = all.indexOf(needle[0], i + 1)) {
        for (let j = 1; j < needle.length; j++) if (all[i + j] !== needle[j]) continue outer;
        return true;
      }
      return false;
    };
    const buffer = window.demo.term.buffer.active;
    const lines = [];
    for (let i = 0; i < buffer.length; i++) lines.push(buffer.getLine(i).translateToString(true));
    return {
      bytes: all.length,
      zmodemHeader: has("**\x18B0"),
      trzszMagic: has("::TRZSZ:TRANSFER:"),
      infos,
      notes: lines.filter((line) => line.startsWith("[ws-subprocess:")),
      transfers: window.demo.transfers,
    };
  });
  results.watcher.started = started;

  results.replay = await replay(page);
  results.reattach = await reattach(page);

  await page.keyboard.type("exit 0\n");
  await page.waitForFunction(() => document.getElementById("status").textContent.startsWith("exited"));
}
