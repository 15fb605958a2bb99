// Headless Chromium for the browser tests (browser-test.mjs,
// client-test.mjs): $CHROMIUM or Debian's /usr/bin/chromium, quiet and
// without a sandbox (tests run as root in CI). MIT.
import { chromium } from "playwright-core";

export function launchChromium() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
}
