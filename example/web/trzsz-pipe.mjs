// A trzsz client on pipes, for tests and benchmarks without a browser: the
// session's output comes in on stdin, trzsz's answers go out on stdout, and
// what it would show on a terminal goes to stderr. The npm package's own
// client (trzsz.js, as the page uses it), with Node's file system.
//   node trzsz-pipe.mjs download DIR   # answers `tsz`: saves into DIR
//   node trzsz-pipe.mjs upload FILE    # answers `trz`: sends FILE
// Exits 0 once one transfer is over, 1 if none started within 30 s. MIT.
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { TrzszFilter } = require("trzsz");

const [mode, path] = process.argv.slice(2);
if (!["download", "upload"].includes(mode) || !path) {
  console.error("usage: node trzsz-pipe.mjs download DIR | upload FILE");
  process.exit(2);
}
const filter = new TrzszFilter({
  writeToTerminal: (data) => process.stderr.write(typeof data === "string" ? data : Buffer.from(data)),
  sendToServer: (data) => process.stdout.write(typeof data === "string" ? data : Buffer.from(data)),
  chooseSendFiles: async () => (mode === "upload" ? [path] : undefined),
  chooseSaveDirectory: async () => (mode === "download" ? path : undefined),
  terminalColumns: 80,
});
process.stdin.on("data", (chunk) => filter.processServerOutput(new Uint8Array(chunk)));
let started = false;
const deadline = Date.now() + 30000;
const watch = setInterval(() => {
  if (filter.isTransferringFiles()) {
    started = true;
  } else if (started) {
    clearInterval(watch);
    process.exit(0);
  } else if (Date.now() > deadline) {
    console.error("trzsz-pipe: no transfer started");
    process.exit(1);
  }
}, 10);
