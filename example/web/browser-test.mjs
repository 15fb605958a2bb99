// Drives the demo page in headless Chromium: a real browser, the real
// xterm.js page, the real server. Usage: node browser-test.mjs URL SCREENSHOT
// Prints a JSON summary; exits non-zero on any failure.
import { launchChromium } from "./chromium.mjs";

const [url, screenshot] = process.argv.slice(2);
const browser = await launchChromium();
const results = {};
try {
  const page = await browser.newPage({ viewport: { width: 1000, height: 600 } });
  page.setDefaultTimeout(15000);
  await page.goto(url);
  const running = () => page.waitForFunction(() => document.getElementById("status").dataset.state === "running");
  await running();
  const screen = () => page.evaluate(() => {
    const buffer = window.demo.term.buffer.active;
    const lines = [];
    for (let i = 0; i < buffer.length; i++) lines.push(buffer.getLine(i).translateToString(true));
    return lines.join("\n");
  });
  const waitForScreen = async (needle) => {
    const deadline = Date.now() + 15000;
    while (Date.now() < deadline) {
      const text = await screen();
      if (needle instanceof RegExp ? needle.test(text) : text.includes(needle)) return text;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`never saw ${needle} on screen:\n${await screen()}`);
  };
  await page.click("#terminal");
  const size = await page.evaluate(() => [window.demo.term.rows, window.demo.term.cols]);
  results.size = size;
  await page.keyboard.type("stty size; echo hello-$((6*7))\n");
  await waitForScreen(`${size[0]} ${size[1]}`);
  await waitForScreen(/^hello-42$/m);

  // A narrower window: xterm.js refits, the page sends a resize, the
  // terminal on the server follows.
  await page.setViewportSize({ width: 640, height: 360 });
  await page.waitForFunction((cols) => window.demo.term.cols !== cols, size[1]);
  const resized = await page.evaluate(() => [window.demo.term.rows, window.demo.term.cols]);
  results.resized = resized;
  await page.keyboard.type("clear; stty size\n");
  await waitForScreen(`${resized[0]} ${resized[1]}`);

  // Reloading the tab brings the same shell back, with its screen.
  await page.keyboard.type("echo before-$((40+2))\n");
  await waitForScreen(/^before-42$/m);
  const id = await page.evaluate(() => window.demo.id);
  await page.reload();
  await running();
  await waitForScreen(/^before-42$/m);
  results.reloaded = await page.evaluate(() => window.demo.id) === id;
  await page.click("#terminal");

  // A second tab watches the same session as an observer.
  const watcher = await browser.newPage({ viewport: { width: 640, height: 360 } });
  watcher.setDefaultTimeout(15000);
  await watcher.goto(url + "?watch=" + encodeURIComponent(id));
  await watcher.waitForFunction(() => document.getElementById("status").dataset.state === "running");
  await page.keyboard.type("echo observed-$((2+3))\n");
  await waitForScreen(/^observed-5$/m);
  await watcher.waitForFunction(() => {
    const buffer = window.demo.term.buffer.active;
    for (let i = 0; i < buffer.length; i++) if (buffer.getLine(i).translateToString(true) === "observed-5") return true;
    return false;
  });
  results.watched = true;

  // A full-screen program.
  await page.keyboard.type("nano\n");
  await waitForScreen("GNU nano");
  await page.keyboard.type("typed in nano");
  await waitForScreen("typed in nano");
  await page.screenshot({ path: screenshot });
  await page.keyboard.press("Control+X");
  await waitForScreen("Save modified buffer");
  await page.keyboard.press("n");
  await page.keyboard.type("exit 5\n");
  await page.waitForFunction(() => document.getElementById("status").textContent.startsWith("exited"));
  results.status = await page.evaluate(() => document.getElementById("status").textContent);
  console.log(JSON.stringify(results));
} finally {
  await browser.close();
}
